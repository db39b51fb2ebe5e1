# The session's last device calls: every GPU-tier test, then the benchmarks, each step under its own
# time limit (BENCH_NO_PEER=1 leaves FlashInfer out of the benchmarks: its first-use compiles
# outlast a short call). Results come back as one archive ($OUT allows few files): logs, markdown tables, JSON.
#   bash scripts/gpu_final.sh tests bench-decode          (call 1)
#   bash scripts/gpu_final.sh serve prefill sampling ...  (call 2)
source scripts/device_setup.sh
set -o pipefail
RES=/tmp/res; mkdir -p $RES; export OUT_FINAL=$OUT; export OUT=$RES
for step in "$@"; do
  echo "=== $step [$(date +%T)]"
  case $step in
    tests-again) timeout 200 python3 -m pytest -q -rs -n 8 -p no:cacheprovider --tb=short tests --ignore=tests/test_aot_compile.py \
             --deselect tests/test_mla.py::test_torch_compile_fullgraph > $RES/tests_again.log 2>&1;
             grep -E "^(FAILED|ERROR|SKIPPED)|passed|failed" $RES/tests_again.log | tail -30 ;;
    tests) timeout 290 python3 -m pytest -q -rs -n 8 -p no:cacheprovider --tb=short tests --ignore=tests/test_aot_compile.py \
             > $RES/tests_all.log 2>&1; grep -E "^(FAILED|ERROR|SKIPPED)|passed|failed" $RES/tests_all.log | tail -30 ;;
    bench-decode) timeout 190 python3 benchmarks/bench_decode.py --plot --reps 25 2>&1 | tee $RES/bench_decode.log | tail -25 ;;
    tune-decode) timeout 420 python3 benchmarks/tune_decode.py --reps 15 --budget-s 250 ${TUNE_ARGS:---shapes 1x16 1x512 1x2048 1x8192 16x512 256x512 64x8192 1x131072 skew64 --block-n 32 64 128 --warps 4 --stages 2 5 7 --ppc 2 4 8 --fill 2 --min-chunk 128 256 1024} \
             2>&1 | tee $RES/tune_decode.log | grep -v "^  FAILED" | tail -40 ;;
    tune-prefill) timeout ${STEP_TIMEOUT:-330} python3 benchmarks/tune_prefill.py --reps 10 --budget-s ${STEP_BUDGET:-280} ${TUNE_ARGS:-} 2>&1 | tee -a $RES/tune_prefill.log | grep -v "^  FAILED" | tail -45 ;;
    fi-cache) du -sh ~/.cache/flashinfer 2>/dev/null; find ~/.cache/flashinfer -name "*.so" -exec ls -la {} \; 2>/dev/null | awk '{print $5, $9}' | tail -20 ;;
    # FlashInfer's compiled JIT modules, kept across calls: fi-cache-save packs every <name>/<name>.so of
    # its JIT dir into $OUT/fi_so.tgz (comes back if under 16 MiB); copied here into .ficache/ (git-ignored)
    # and carried, fi-cache-load unpacks it into the package's AOT dir (flashinfer/data/aot/<name>/<name>.so),
    # which FlashInfer loads without compiling.
    fi-cache-save) jit=$(python3 -c "import flashinfer.jit.env as e; print(e.FLASHINFER_JIT_DIR)"); rm -rf /tmp/ficache; mkdir -p /tmp/ficache;
             for so in $jit/*/*.so; do [ -f "$so" ] || continue; n=$(basename $(dirname $so)); mkdir -p /tmp/ficache/$n; cp $so /tmp/ficache/$n/; done;
             du -sh /tmp/ficache/* 2>/dev/null; tar czf $OUT_FINAL/fi_so.tgz -C /tmp/ficache . && ls -la $OUT_FINAL/fi_so.tgz ;;
    fi-cache-load) aot=$(python3 -c "import flashinfer, os; print(os.path.join(os.path.dirname(flashinfer.__file__), 'data', 'aot'))");
             if [ -f .ficache/fi_so.tgz ]; then mkdir -p $aot && tar xzf .ficache/fi_so.tgz -C $aot && ls $aot; else echo "no .ficache/fi_so.tgz carried"; fi ;;
    tune-sampling) timeout ${STEP_TIMEOUT:-300} python3 benchmarks/tune_sampling.py --reps 20 --budget-s ${STEP_BUDGET:-200} ${TUNE_ARGS:-} 2>&1 | tee $RES/tune_sampling.log | tail -40 ;;
    tune-mla) timeout ${STEP_TIMEOUT:-300} python3 benchmarks/tune_mla.py --reps 10 --budget-s ${STEP_BUDGET:-200} ${TUNE_ARGS:-} 2>&1 | tee $RES/tune_mla.log | grep -v "^  FAILED" | tail -25 ;;
    warm-fi-bg) (timeout 400 python3 benchmarks/warm_flashinfer.py --parts ${WARM_PARTS:-sampling ops decode prefill cascade} > $RES/warm_fi.log 2>&1 &) ;;
    warm-fi-wait) parts=(${WARM_PARTS:-sampling ops decode prefill cascade});
             for i in $(seq 1 ${WARM_WAIT_STEPS:-80}); do n=$(grep -c "^warm_flashinfer:" $RES/warm_fi.log 2>/dev/null); [ "${n:-0}" -ge ${#parts[@]} ] && break; sleep 5; done;
             cat $RES/warm_fi.log | grep -v Warning | tail -8 ;;
    pytest) timeout ${TESTS_TIMEOUT:-150} python3 -m pytest -q -rs -n 8 -p no:cacheprovider --tb=short ${TEST_FILES:-tests/test_mla.py} \
             > $RES/tests_pytest.log 2>&1; grep -E "^(FAILED|ERROR|SKIPPED)|passed|failed" $RES/tests_pytest.log | tail -30 ;;
    tests-focus) timeout ${TESTS_TIMEOUT:-150} python3 -m pytest -q -rs -n 8 -p no:cacheprovider --tb=short tests/test_decode.py tests/test_engine_replay.py \
             tests/test_wrapper_state.py tests/test_cascade.py tests/test_serving.py tests/test_bad_inputs.py tests/test_large_tensors.py tests/test_attention_properties.py \
             > $RES/tests_focus.log 2>&1; grep -E "^(FAILED|ERROR|SKIPPED)|passed|failed" $RES/tests_focus.log | tail -30 ;;
    serve-long) timeout ${SERVE_TIMEOUT:-300} python3 examples/serve.py --quick 2>&1 | tee $RES/serve.log | tail -30 ;;
    serve) timeout 190 python3 examples/serve.py --quick 2>&1 | tee $RES/serve.log | tail -25 ;;
    prefill) timeout 100 python3 benchmarks/bench_prefill.py --reps 15 --budget-s 45 2>&1 | tee $RES/bench_prefill.log | tail -14 ;;
    sampling) timeout 100 python3 benchmarks/bench_sampling.py --budget-s 60 2>&1 | tee $RES/bench_sampling.log | tail -20 ;;
    cascade) timeout 60 python3 benchmarks/bench_cascade.py 2>&1 | tee $RES/bench_cascade.log | tail -10 ;;
    sparse) timeout ${STEP_TIMEOUT:-60} python3 benchmarks/bench_sparse.py --seq-lens 8192 --reps 8 --budget-s ${STEP_BUDGET:-30} 2>&1 | tee $RES/bench_sparse.log | tail -16 ;;
    mla) timeout ${STEP_TIMEOUT:-60} python3 benchmarks/bench_mla.py --quick --budget ${STEP_BUDGET:-30} 2>&1 | tee $RES/bench_mla.log | tail -16 ;;
    variants) timeout ${STEP_TIMEOUT:-60} python3 benchmarks/bench_variants.py --budget-s ${STEP_BUDGET:-30} 2>&1 | tee $RES/bench_variants.log | tail -14 ;;
    *) echo "unknown step $step" ;;
  esac
  tar czf $OUT_FINAL/res.tgz -C $RES . 2>/dev/null  # after every step: a call stopped at its limit keeps the steps done
done
rm -rf $RES/results; cp -r benchmarks/results $RES/results 2>/dev/null
tar czf $OUT_FINAL/res.tgz -C $RES .
echo "=== done [$(date +%T)]"
