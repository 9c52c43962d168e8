#!/usr/bin/env bash
# Every GPU figure of bench/README.md in one prepared run on one CUDA machine (about 9 minutes on one H200).
#
#   bash bench/gpu_run.sh OUT_DIR [PART]     # on the GPU machine; OUT_DIR/results_PART.tgz holds the JSON and logs
#   QUICK=1 bash bench/gpu_run.sh OUT_DIR    # the same steps at toy sizes on a CPU (checks the script itself)
#
# PART: "train" (the main job and its large-batch variants, token merging), "2b" (cosmo-2b step, generation,
# memory) or "all" (default). Each part fits in one 10-minute call.
#
# A machine without the project's Python packages gets them from wheels in .whl/ (see bench/README.md). Each step
# has its own time limit, so one failing or slow step still leaves the others' results; `summary.txt` lists them.
set -uo pipefail
final=${1:?usage: bash bench/gpu_run.sh OUT_DIR}
final=$(mkdir -p "$final" && cd "$final" && pwd)
part=${2:-all}
out=${WORK_DIR:-/tmp/gpu_run}   # logs and JSON; packed into OUT_DIR/results.tgz after every step
rm -rf "$out"; mkdir -p "$out"
cd "$(dirname "$0")/.."
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export COSMO_VL_CACHE=${COSMO_VL_CACHE:-/tmp/cosmo_vl_cache}
quick=${QUICK:-0}
device=cuda; [ "$quick" = 1 ] && device=cpu
summary=$out/summary.txt
: > "$summary"

step() {  # step NAME SECONDS COMMAND...: run with a limit, log to OUT/NAME.log, note rc and wall time
    local name=$1 limit=$2; shift 2
    local start=$SECONDS
    timeout --signal=INT --kill-after=10 "$limit" "$@" > "$out/$name.log" 2>&1
    local rc=$?
    printf '%-24s rc=%-3s %4ss\n' "$name" "$rc" "$((SECONDS - start))" | tee -a "$summary"
    tail -n 3 "$out/$name.log" | sed 's/^/    /'
    tar czf "$final/results_$part.tgz" -C "$out" --exclude='*/checkpoint-*' --exclude='*/runs' . 2>/dev/null
    cp "$summary" "$final/summary_$part.txt"
}

python3 - <<'EOF' | tee "$out/machine.txt"
import torch, transformers, accelerate, datasets
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")
print("transformers", transformers.__version__, "accelerate", accelerate.__version__, "datasets", datasets.__version__)
EOF

if [ "$part" != 2b ]; then
# 1. The main job, data already cached (the corpus is generated once, outside the timed run), then the same recipe
#    at 4x the batch for a quarter of the steps (the same samples seen), at two learning rates.
step data_cache 120 python3 -c "from cosmo_vl.processing import load_any; load_any('shapes-captions')"
if [ "$quick" = 1 ]; then
    main_args=(--max_steps 6 --max_eval_samples 16 --per_device_train_batch_size 8 --logging_steps 2 --save_steps 3)
    big_args=(--max_steps 3 --max_eval_samples 16 --per_device_train_batch_size 16 --logging_steps 1 --save_steps 2)
else
    main_args=()
    big_args=(--max_steps 625 --per_device_train_batch_size 256 --warmup_steps 40 --save_steps 125 --logging_steps 25)
fi
run_main() {  # run_main NAME LIMIT ARGS...: the main command, its results copied beside the logs
    local name=$1 limit=$2; shift 2
    rm -rf "/tmp/$name"
    step "$name" "$limit" accelerate launch examples/pretrain.py --output_dir "/tmp/$name" --report_to none "$@"
    cp "/tmp/$name/eval_results.json" "$out/${name}_eval.json" 2>/dev/null
}
run_main main_job 200 "${main_args[@]}"
run_main main_b256_lr2e-3 120 "${big_args[@]}" --learning_rate 2e-3
if [ "$quick" = 1 ]; then
    step token_merge 300 python3 bench/token_merge.py --output "$out/token_merge.json" --batch 2 --iters 1 \
        --quality_steps 0 --dtype bfloat16 --skip_simvlg
else
    # 2. Token merging, bf16: ViT-B/16 tower at batch 256 (fwd+bwd and inference), SimVLG step at batch 64.
    step token_merge 200 python3 bench/token_merge.py --device cuda --dtype bfloat16 --batch 64 --tower_batch 256 \
        --iters 5 --quality_steps 0 --output "$out/token_merge_bf16.json"
fi
# Where a step's time goes: data wait vs compute per worker count, and a torch.profiler table of 50 steps.
ip_args=(--quick --workers 0 4 8 --trainer_workers 0 8 --steps 120)
[ "$quick" = 1 ] && ip_args=(--quick --steps 4 --workers 0 1 --trainer_workers 0)
step input_pipeline 150 python3 bench/input_pipeline.py --output "$out/input_pipeline.json" --video_dataset none \
    --profile_steps 50 "${ip_args[@]}"
run_main main_b256_lr1e-3 120 "${big_args[@]}" --learning_rate 1e-3
fi

if [ "$quick" = 1 ]; then
    [ "$part" != train ] && step roofline 300 python3 bench/roofline.py --config tiny --shapes 2x32 --quick --trainer \
        --levers --time_split --output "$out/roofline.json"
    [ "$part" != train ] && step generation 180 python3 bench/generation.py --quick --output "$out/generation.json"
else
    if [ "$part" != train ]; then
        # 3. cosmo-2b training step: bare loop and the CosmoTrainer path (bf16 autocast), 8x512 and 16x1024, levers.
        step roofline_2b 240 python3 bench/roofline.py --device cuda --config 2b --trainer --levers --time_split \
            --warmup 2 --iters 4 --output "$out/roofline_2b.json"
        # 4. Generation: cosmo-2b bf16 tokens/s, 1 and 4 images, batch 1 and 8, beside the bare LM.
        step generation_2b 120 python3 bench/generation.py --device cuda --config 2b --output "$out/generation_2b.json"
        # 5. The largest Trainer batch at 1024 tokens, with and without gradient checkpointing.
        step memory_2b 150 python3 bench/roofline.py --device cuda --config 2b --memory_only --max_search_s 40 \
            --output "$out/memory_2b.json"
    fi
fi
cat "$summary"
