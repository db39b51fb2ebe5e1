# One device call of this session: GPU-tier attention tests, then the decode sweep, then a quick
# decode benchmark beside FlashInfer. Usage on the device: bash scripts/gpu_session.sh <step...>
source scripts/device_setup.sh
set -o pipefail
for step in "$@"; do
  echo "=== $step [$(date +%T)]"
  case $step in
    tests-attn) timeout 300 python3 -m pytest -q -n 8 -p no:cacheprovider --tb=short tests/test_decode.py \
                  tests/test_prefill.py tests/test_cascade.py tests/test_merge_state.py > $OUT/tests_attn.log 2>&1;
                grep -E "^(FAILED|ERROR)|passed|failed" $OUT/tests_attn.log | tail -25 ;;
    tests-rest) timeout 300 python3 -m pytest -q -n 8 -p no:cacheprovider --tb=short tests --ignore=tests/test_aot_compile.py \
                  --ignore=tests/test_decode.py --ignore=tests/test_prefill.py --ignore=tests/test_cascade.py \
                  --ignore=tests/test_merge_state.py > $OUT/tests_rest.log 2>&1;
                grep -E "^(FAILED|ERROR)|passed|failed" $OUT/tests_rest.log | tail -25 ;;
    tests) timeout 420 python3 -m pytest -q -n 8 -p no:cacheprovider --tb=short tests --ignore=tests/test_aot_compile.py \
                  > $OUT/tests_all.log 2>&1; grep -E "^(FAILED|ERROR)|passed|failed" $OUT/tests_all.log | tail -30 ;;
    tune-decode) timeout 330 python3 benchmarks/tune_decode.py --quick --budget-s 150 --block-n 128 2>&1 | tee $OUT/tune_decode.log | tail -60 ;;
    tune-prefill) timeout 300 python3 benchmarks/tune_prefill.py --budget-s 200 2>&1 | tee $OUT/tune_prefill.log | tail -30 ;;
    bench-decode) timeout 300 python3 benchmarks/bench_decode.py --plot --reps 30 2>&1 | tee $OUT/bench_decode.log | tail -30 ;;
    bench-decode-quick) timeout 200 python3 benchmarks/bench_decode.py --quick --reps 20 2>&1 | tee $OUT/bench_decode.log | tail -20 ;;
    tests-sparse) timeout 300 python3 -m pytest -q -p no:cacheprovider --tb=short tests/test_sparse.py \
                  > $OUT/tests_sparse.log 2>&1; grep -E "^(FAILED|ERROR)|passed|failed" $OUT/tests_sparse.log | tail -25 ;;
    bench-sparse) timeout 300 python3 benchmarks/bench_sparse.py --plot 2>&1 | tee $OUT/bench_sparse.log | tail -50 ;;
    tests-variants) timeout 300 python3 -m pytest -q -p no:cacheprovider --tb=short tests/test_variants.py \
                  > $OUT/tests_variants.log 2>&1; grep -E "^(FAILED|ERROR)|passed|failed" $OUT/tests_variants.log | tail -25;
                timeout 120 python3 examples/attention_variants.py 2>&1 | tail -8 ;;
    bench-variants) timeout 330 python3 benchmarks/bench_variants.py 2>&1 | tee $OUT/bench_variants.log | tail -40 ;;
    compile-variant) timeout 200 python3 benchmarks/variant_compile_time.py --json 2>&1 | tail -4 ;;
    tests-mla) timeout 300 python3 -m pytest -q -p no:cacheprovider --tb=short tests/test_mla.py \
                  > $OUT/tests_mla.log 2>&1; grep -E "^(FAILED|ERROR)|passed|failed" $OUT/tests_mla.log | tail -25 ;;
    bench-mla) timeout 300 python3 benchmarks/bench_mla.py --budget 170 2>&1 | tee $OUT/bench_mla.log | tail -75 ;;
    tune-mla) timeout 330 python3 benchmarks/tune_mla.py --budget-s 200 2>&1 | tee $OUT/tune_mla.log | tail -30 ;;
    *) echo "unknown step $step" ;;
  esac
done
cp benchmarks/results/tune/*.json $OUT/ 2>/dev/null
echo "=== done [$(date +%T)]"
