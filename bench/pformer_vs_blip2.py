"""BLIP-2 with and without the P-Former alignment prior, at equal BLIP-2 steps, on the embedded shapes data.

    python bench/pformer_vs_blip2.py --output out/pformer_vs_blip2.json            # the measured run (minutes)
    python bench/pformer_vs_blip2.py --output out/pformer_vs_blip2_quick.json --quick   # a smoke run (seconds)

Shapes come from the `blip2-tiny` preset (its ViT, Q-Former with text input, LM config, tokenizer with `<image>`
and BLIP image processor); the query count is `--num_queries` (= the P-Former's prompt count). Pipeline (one
process, one seed; every stage is a plain AdamW loop, cosine schedule, batch `--batch_size`):

  lm       blip2-tiny's LM (cosmo-tiny's Llama) pretrained on text only: the training captions ("<s>{caption}</s>") and
           questions answered from a caption ("{caption}<s>Question:{q} Short answer:{a}</s>", every question the
           VQA grammar asks about each training scene). It stands in for BLIP-2's pretrained OPT: BLIP-2 needs an
           LM that already reads, and it gives the zero-shot VQA path a reader. Frozen from here on, shared by both.
  pformer  P-Former stage 0 (pformer-tiny's BERT encoder and prompt head, `num_prompts` = BLIP-2's query tokens,
           the frozen LM above) on the caption sentences only.
  blip2    Stage 1 (`Blip2StageModel` on `Blip2ForImageTextRetrieval`: ITC + ITM + ITG; the random ViT is trained,
           as cosmo-tiny trains its towers) for `--stage1_steps`, then stage 2 (`to_stage2`: frozen ViT and LM, LM
           loss on "<s>{caption}</s>") for `--stage2_steps`.
  pformer+blip2  The same two stages from the same initial weights and batches, plus the alignment term
           MSE(projected queries, P-Former prompts of the caption), weight 10 in stage 1 and 100 in stage 2.

Evaluation (greedy, no beam): captioning on `shapes-captions` `test` (colour x shape pairs never seen in training)
and `test_iid` (exact match, CIDEr-D, BLEU-4 with `cosmo_vl.metrics`), prompt = visual prompts + "<s>"; VQA on
`shapes-vqa` `test` / `test_iid`, zero-shot (visual prompts + "<s>Question:{q} Short answer:") and 2-shot (two
training demonstrations "prompts<s>Question:{q} Short answer:{a}</s>" before the query; the LM never saw several
documents in one sequence, so this is out of its distribution). VQA brackets: `no_image` (the question alone) and
`caption_context` (the true caption as the context, the LM's ceiling). Diagnostics: the alignment MSE of both models
on held-out captions, the spread of the prompts across images (MSE to their mean: ~0 = one prompt for every
image), how often the LM reconstructs a held-out caption from its P-Former prompts, and the LM's per-token caption
loss with no prefix, with the caption's own P-Former prompts, and with each model's visual prompts.
"""

import argparse
import copy
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, Blip2ForImageTextRetrieval, get_cosine_schedule_with_warmup, set_seed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cosmo_vl.metrics import bleu, cider_d, exact_match, vqa_accuracy  # noqa: E402
from cosmo_vl.modeling import PFormerModel  # noqa: E402
from cosmo_vl.presets import get_config, get_processor  # noqa: E402
from cosmo_vl.processing import load_embedded_dataset  # noqa: E402
from cosmo_vl.processing.scenes import Group, Scene  # noqa: E402
from cosmo_vl.processing.synthetic import vqa_questions  # noqa: E402
from cosmo_vl.trainers.blip2_stages import Blip2StageModel, alignment_mse  # noqa: E402
from bench.objectives import source_state  # noqa: E402

ARMS = ("blip2", "pformer+blip2")
SPLITS = ("test", "test_iid")


# ------------------------------------------------------------------------------------------------- data
def scene_of(row: dict) -> Scene:
    return Scene(tuple(Group(**g) for g in row["objects"]), row["background"])


class Texts:
    """Tokenisation in the formats of the pipeline (the embedded tokenizer; BOS/EOS written explicitly)."""

    def __init__(self, tokenizer, max_length: int):
        self.tok, self.max_length = tokenizer, max_length
        self.bos, self.eos, self.pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id

    def ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"][: self.max_length]

    def pad_right(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), self.pad, dtype=torch.long)
        mask = torch.zeros(len(rows), length, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
        return ids, mask

    def sentences(self, captions: list[str], eos: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """'<s>{caption}</s>' right padded (the LM / P-Former / stage-2 format; stage 1 drops the EOS)."""
        return self.pad_right([self.ids("<s>" + c + ("</s>" if eos else "")) for c in captions])


def lm_corpus(caption_rows, vqa_rows, seed: int) -> list[str]:
    """The LM's text: every training caption, and every grammar question about each training scene answered
    after the caption as context."""
    rng = random.Random(seed)
    texts = []
    for rows in (caption_rows, vqa_rows):
        for row in rows.select_columns(["objects", "background"]):
            scene = scene_of(row)
            texts.append(f"<s>{scene.caption}</s>")
            for _, question, answer in vqa_questions(scene, rng, held_out=False):
                texts.append(f"{scene.caption}<s>Question:{question} Short answer:{answer}</s>")
    rng.shuffle(texts)
    return texts


def batches(n: int, batch_size: int, steps: int, seed: int):
    """`steps` index batches over `n` items: reshuffled epochs, last incomplete batch dropped."""
    g = torch.Generator().manual_seed(seed)
    out, order = [], []
    while len(out) < steps:
        if len(order) < batch_size:
            order = torch.randperm(n, generator=g).tolist()
        out.append(order[:batch_size])
        order = order[batch_size:]
    return out


# ------------------------------------------------------------------------------------------------ models
def train_loop(model, step_fn, steps: int, lr: float, warmup: int, log_every: int, name: str) -> dict:
    """AdamW + cosine; `step_fn(i)` returns the output with `.loss` (and components). Returns timings and logs."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    schedule = get_cosine_schedule_with_warmup(optimizer, warmup, steps)
    model.train()
    logs, times, start = [], [], time.perf_counter()
    window: dict[str, list] = {}
    for i in range(steps):
        t0 = time.perf_counter()
        out = step_fn(i)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        for key in ("loss", "lm_loss", "contrastive_loss", "itm_loss", "alignment_loss", "word_embedding_loss"):
            value = getattr(out, key, None)
            if value is not None:
                window.setdefault(key, []).append(float(value.detach()))
        if (i + 1) % log_every == 0 or i + 1 == steps:
            logs.append({"step": i + 1, **{k: round(sum(v) / len(v), 4) for k, v in window.items()}})
            window = {}
    model.eval()
    return {"steps": steps, "wall_s": round(time.perf_counter() - start, 2),
            "step_time_s": round(sum(times[1:]) / max(1, len(times) - 1), 5), "final": logs[-1] if logs else {},
            "log": logs, "name": name}


def lm_step_output(lm, ids, mask):
    labels = ids.masked_fill(~mask.bool(), -100)
    return lm(input_ids=ids, attention_mask=mask, labels=labels)


# ------------------------------------------------------------------------------------------------- eval
@torch.no_grad()
def visual_prompts(stage2: Blip2StageModel, pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, Q, D_lm) projected query outputs of a stage-2 model."""
    return stage2.blip2.language_projection(stage2._queries(stage2._image_embeds(pixel_values)))


@torch.no_grad()
def greedy(lm, segments: list[list], texts: Texts, max_new_tokens: int, batch_size: int = 64) -> list[str]:
    """Greedy decoding from prompts made of segments, each a (n, D) embedding tensor or a list of token ids; rows
    are left padded, positions follow the attention mask, decoding stops at EOS."""
    embed = lm.get_input_embeddings()
    outputs = []
    for start in range(0, len(segments), batch_size):
        rows = []
        for parts in segments[start : start + batch_size]:
            pieces = [p if torch.is_tensor(p) else embed(torch.tensor(p, dtype=torch.long)) for p in parts]
            rows.append(torch.cat(pieces))
        length = max(r.shape[0] for r in rows)
        dim = rows[0].shape[1]
        embeds = embed(torch.full((len(rows), length), texts.pad, dtype=torch.long)).clone()
        mask = torch.zeros(len(rows), length, dtype=torch.long)
        for i, r in enumerate(rows):
            embeds[i, length - r.shape[0] :], mask[i, length - r.shape[0] :] = r.reshape(-1, dim), 1
        generated = torch.full((len(rows), 0), texts.pad, dtype=torch.long)
        done = torch.zeros(len(rows), dtype=torch.bool)
        for _ in range(max_new_tokens):
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits[:, -1]
            token = logits.argmax(-1).masked_fill(done, texts.pad)
            generated = torch.cat([generated, token[:, None]], 1)
            done |= token == texts.eos
            if bool(done.all()):
                break
            embeds = torch.cat([embeds, embed(token)[:, None]], 1)
            mask = torch.cat([mask, torch.ones(len(rows), 1, dtype=torch.long)], 1)
        for row in generated.tolist():
            row = row[: row.index(texts.eos)] if texts.eos in row else row
            outputs.append(texts.tok.decode([t for t in row if t != texts.pad], skip_special_tokens=True).strip())
    return outputs


def caption_scores(predictions: list[str], references: list[str]) -> dict:
    refs = [[r] for r in references]
    return {"exact_match": round(exact_match(predictions, refs), 4),
            "cider": round(cider_d(predictions, refs)["cider"], 4), "bleu4": round(bleu(predictions, refs)["bleu4"], 4)}


def evaluate_arm(stage2: Blip2StageModel, lm, texts: Texts, evals: dict, demos: list, args) -> dict:
    result: dict = {"captioning": {}, "vqa_zero_shot": {}, "vqa_2shot": {}}
    bos = [texts.bos]
    demo_segments = []
    for d in demos:
        demo_segments += [d["prompts"], bos + texts.ids(f"Question:{d['question']} Short answer:{d['answer']}</s>")]
    for split in SPLITS:
        caps = evals["captions"][split]
        prompts = visual_prompts(stage2, caps["pixel_values"])
        predictions = greedy(lm, [[p, bos] for p in prompts], texts, args.max_new_tokens)
        result["captioning"][split] = {**caption_scores(predictions, caps["text"]),
                                       "examples": [{"reference": r, "prediction": p}
                                                    for r, p in list(zip(caps["text"], predictions))[:4]]}
        vqa = evals["vqa"][split]
        prompts = visual_prompts(stage2, vqa["pixel_values"])
        questions = [bos + texts.ids(f"Question:{q} Short answer:") for q in vqa["question"]]
        answers = [[a] for a in vqa["answer"]]
        zero = greedy(lm, [[p, q] for p, q in zip(prompts, questions)], texts, 8)
        few = greedy(lm, [demo_segments + [p, q] for p, q in zip(prompts, questions)], texts, 8)
        result["vqa_zero_shot"][split] = {"accuracy": round(vqa_accuracy(zero, answers), 4),
                                          **_by_type(zero, vqa["answer"], vqa["question_type"])}
        result["vqa_2shot"][split] = {"accuracy": round(vqa_accuracy(few, answers), 4)}
    return result


def _by_type(predictions, answers, types) -> dict:
    out: dict = {}
    for kind in sorted(set(types)):
        idx = [i for i, t in enumerate(types) if t == kind]
        out[f"accuracy/{kind}"] = round(vqa_accuracy([predictions[i] for i in idx], [[answers[i]] for i in idx]), 4)
    return out


def vqa_brackets(lm, texts: Texts, evals: dict) -> dict:
    """The LM alone: the question without any image, and with the true caption as its context."""
    out: dict = {}
    for split in SPLITS:
        vqa = evals["vqa"][split]
        answers = [[a] for a in vqa["answer"]]
        plain = [[[texts.bos] + texts.ids(f"Question:{q} Short answer:")] for q in vqa["question"]]
        context = [[texts.ids(c) + [texts.bos] + texts.ids(f"Question:{q} Short answer:")]
                   for c, q in zip(vqa["caption"], vqa["question"])]
        out[split] = {"no_image": round(vqa_accuracy(greedy(lm, plain, texts, 8), answers), 4),
                      "caption_context": round(vqa_accuracy(greedy(lm, context, texts, 8), answers), 4)}
    return out


@torch.no_grad()
def pformer_diagnostics(pformer, stage2_models: dict, lm, texts: Texts, evals: dict, max_new_tokens: int) -> dict:
    caps = evals["captions"]["test"]
    ids, mask = texts.sentences(caps["text"])
    targets = pformer.get_prompts(ids, mask)  # (B, Q, D)
    reconstructed = greedy(lm, [[p, [texts.bos]] for p in targets], texts, max_new_tokens)
    out = {"reconstruction_exact_match_test": round(exact_match(reconstructed, [[c] for c in caps["text"]]), 4),
           "reconstruction_cider_test": round(cider_d(reconstructed, [[c] for c in caps["text"]])["cider"], 4),
           "prompt_norm": round(float(targets.norm(dim=-1).mean()), 4),
           # MSE of always predicting the mean prompt: an alignment MSE near it carries no caption information.
           "prompt_spread_mse": round(float(alignment_mse(targets.mean(0, keepdim=True).expand_as(targets), targets)),
                                      5)}
    # Per-token caption loss of the frozen LM (BOS not predicted) without any prefix, after the P-Former prompts of
    # the caption itself, and after each model's visual prompts: how much the prefixes tell the LM.
    labels = ids.masked_fill(~mask.bool(), -100)
    labels[:, 0] = -100
    out["caption_loss_test/lm_alone"] = round(float(lm(input_ids=ids, attention_mask=mask, labels=labels).loss), 4)
    out["caption_loss_test/pformer_prompts"] = round(float(pformer(input_ids=ids, attention_mask=mask).lm_loss), 4)
    for arm, stage2 in stage2_models.items():
        loss = stage2(pixel_values=caps["pixel_values"], input_ids=ids, attention_mask=mask, labels=labels).lm_loss
        out[f"caption_loss_test/{arm}"] = round(float(loss), 4)
    for arm, stage2 in stage2_models.items():
        prompts = visual_prompts(stage2, caps["pixel_values"])
        out[f"alignment_mse_test/{arm}"] = round(float(alignment_mse(prompts, targets)), 5)
        out[f"visual_prompt_norm/{arm}"] = round(float(prompts.norm(dim=-1).mean()), 4)
        out[f"visual_prompt_spread_mse/{arm}"] = round(
            float(alignment_mse(prompts.mean(0, keepdim=True).expand_as(prompts), prompts)), 5)
    return out


# ------------------------------------------------------------------------------------------------ pipeline
def load_data(args, processor, texts: Texts) -> tuple:
    sizes = {"num_train": args.train_samples, "num_test": args.eval_samples} if args.quick else {}
    captions = load_embedded_dataset("shapes-captions", **sizes)
    vqa = load_embedded_dataset("shapes-vqa", **sizes)
    train = captions["train"].select(range(min(args.train_samples, len(captions["train"]))))
    vqa_train = vqa["train"].select(range(min(args.train_samples, len(vqa["train"]))))

    def pixels(images):
        return processor.image_processor(images=list(images), return_tensors="pt")["pixel_values"]

    evals: dict = {"captions": {}, "vqa": {}}
    for split in SPLITS:
        c = captions[split].select(range(min(args.eval_samples, len(captions[split]))))
        evals["captions"][split] = {"pixel_values": pixels(c["image"]), "text": c["text"]}
        v = vqa[split].select(range(min(args.eval_samples, len(vqa[split]))))
        evals["vqa"][split] = {"pixel_values": pixels(v["image"]), "question": v["question"], "answer": v["answer"],
                               "question_type": v["question_type"],
                               "caption": [scene_of(r).caption for r in v.select_columns(["objects", "background"])]}
    data = {"pixel_values": pixels(train["image"]), "text": train["text"]}
    return data, evals, lm_corpus(train, vqa_train, args.seed), vqa_train


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    set_seed(args.seed)
    # The blip2-tiny preset: its ViT / Q-Former / LM shapes, its tokenizer (with `<image>`) and image processor.
    config = get_config("blip2-tiny", num_query_tokens=args.num_queries)
    processor = get_processor("blip2-tiny")
    tokenizer = processor.tokenizer
    texts = Texts(tokenizer, args.max_length)
    data, evals, corpus, vqa_train = load_data(args, processor, texts)
    n = len(data["text"])
    stages: dict = {}

    # LM: text-only pretraining (stands in for the pretrained LM BLIP-2 starts from).
    pformer_config = get_config("pformer-tiny", num_prompts=args.num_queries, text_config=config.text_config)
    set_seed(args.seed)
    lm = AutoModelForCausalLM.from_config(config.text_config)
    corpus_ids = [texts.ids(t) for t in corpus]
    lm_batches = batches(len(corpus_ids), args.batch_size, args.lm_steps, args.seed)

    def lm_step(i):
        return lm_step_output(lm, *texts.pad_right([corpus_ids[j] for j in lm_batches[i]]))

    stages["lm"] = train_loop(lm, lm_step, args.lm_steps, args.lm_learning_rate, max(1, args.lm_steps // 20),
                              args.log_every, "lm")
    lm.requires_grad_(False).eval()

    # P-Former stage 0 on the captions alone, with the frozen LM.
    set_seed(args.seed)
    pformer = PFormerModel(pformer_config, language_model=copy.deepcopy(lm))
    sentences = [texts.ids("<s>" + c + "</s>") for c in data["text"]]
    p_batches = batches(n, args.batch_size, args.pformer_steps, args.seed + 1)

    def pformer_step(i):
        ids, mask = texts.pad_right([sentences[j] for j in p_batches[i]])
        return pformer(input_ids=ids, attention_mask=mask)

    stages["pformer"] = train_loop(pformer, pformer_step, args.pformer_steps, args.learning_rate,
                                   max(1, args.pformer_steps // 10), args.log_every, "pformer")
    pformer.eval()

    # BLIP-2, both arms from the same initial weights and the same batches.
    set_seed(args.seed)
    initial = Blip2ForImageTextRetrieval(config).state_dict()
    s1_batches = batches(n, args.batch_size, args.stage1_steps, args.seed + 2)
    s2_batches = batches(n, args.batch_size, args.stage2_steps, args.seed + 3)
    results: dict = {"arms": {}}
    stage2_models = {}
    for arm in args.arms:
        teacher = pformer if arm == "pformer+blip2" else None
        blip2 = Blip2ForImageTextRetrieval(config)
        blip2.load_state_dict(initial)
        set_seed(args.seed + 10)  # the stage-1 heads and the projection start alike in both arms
        stage1 = Blip2StageModel(blip2, pformer=teacher, freeze_vision_model=False)

        def s1_step(i, stage1=stage1):
            idx = s1_batches[i]
            ids, mask = texts.sentences([data["text"][j] for j in idx], eos=False)
            p_ids, p_mask = texts.sentences([data["text"][j] for j in idx])
            return stage1(pixel_values=data["pixel_values"][idx], input_ids=ids, attention_mask=mask,
                          pformer_input_ids=p_ids, pformer_attention_mask=p_mask)

        arm_stages = {"stage1": train_loop(stage1, s1_step, args.stage1_steps, args.learning_rate,
                                           max(1, args.stage1_steps // 10), args.log_every, f"{arm}/stage1")}
        set_seed(args.seed + 11)
        stage2 = stage1.to_stage2(copy.deepcopy(lm), image_token_index=config.image_token_index,
                                  freeze_vision_model=True)
        if teacher is None:  # plain BLIP-2 starts stage 2 with a fresh projection (seeded)
            torch.manual_seed(args.seed + 12)
            stage2.blip2.language_projection.reset_parameters()

        def s2_step(i, stage2=stage2):
            idx = s2_batches[i]
            ids, mask = texts.sentences([data["text"][j] for j in idx])
            return stage2(pixel_values=data["pixel_values"][idx], input_ids=ids, attention_mask=mask)

        arm_stages["stage2"] = train_loop(stage2, s2_step, args.stage2_steps, args.learning_rate,
                                          max(1, args.stage2_steps // 10), args.log_every, f"{arm}/stage2")
        stage2.eval()
        stage2_models[arm] = stage2
        start = time.perf_counter()
        scores = evaluate_arm(stage2, stage2.blip2.language_model, texts, evals,
                              demo_list(stage2, vqa_train, processor, args.seed), args)
        results["arms"][arm] = {"stages": arm_stages, **scores, "eval_wall_s": round(time.perf_counter() - start, 2),
                                "alignment_weights": None if teacher is None else {"stage1": stage1.alignment_weight,
                                                                                  "stage2": stage2.alignment_weight}}
        print(f"{arm:14s} caption EM {scores['captioning']['test']['exact_match']:.3f} "
              f"CIDEr {scores['captioning']['test']['cider']:.3f}  VQA 0-shot "
              f"{scores['vqa_zero_shot']['test']['accuracy']:.3f}", flush=True)
    results["stages"] = stages
    results["model"] = describe(config, pformer)
    results["vqa_brackets"] = vqa_brackets(lm, texts, evals)
    results["diagnostics"] = pformer_diagnostics(pformer, stage2_models, lm, texts, evals, args.max_new_tokens)
    return results


def demo_list(stage2, vqa_train, processor, seed: int, k: int = 2) -> list[dict]:
    """`k` fixed training demonstrations (different question types) for the few-shot VQA prompt."""
    rng = random.Random(seed)
    picked, kinds = [], set()
    for i in rng.sample(range(len(vqa_train)), len(vqa_train)):
        row = vqa_train[i]
        if row["question_type"] in kinds:
            continue
        kinds.add(row["question_type"])
        pixels = processor.image_processor(images=[row["image"]], return_tensors="pt")["pixel_values"]
        picked.append({"prompts": visual_prompts(stage2, pixels)[0], "question": row["question"],
                       "answer": row["answer"]})
        if len(picked) == k:
            break
    return picked


# ------------------------------------------------------------------------------------------------ report
def describe(config, pformer) -> dict:
    v, q, t = config.vision_config, config.qformer_config, config.text_config
    e = pformer.config.encoder_config
    return {"preset": "blip2-tiny", "vision": f"{v.hidden_size}x{v.num_hidden_layers}",
            "qformer": f"{q.hidden_size}x{q.num_hidden_layers}",
            "lm": f"{t.model_type} {t.hidden_size}x{t.num_hidden_layers}",
            "num_query_tokens": config.num_query_tokens, "pformer_encoder": f"{e.hidden_size}x{e.num_hidden_layers}"}


def _ratio(a, b):
    return round(a / b, 3) if a is not None and b not in (None, 0) else None


def summarize(results: dict) -> dict:
    arms = results["arms"]
    rows = {}
    for arm, r in arms.items():
        rows[arm] = {f"{split}/{metric}": r[task][split][key]
                     for split in SPLITS
                     for metric, task, key in (("caption_exact_match", "captioning", "exact_match"),
                                               ("caption_cider", "captioning", "cider"),
                                               ("vqa_zero_shot", "vqa_zero_shot", "accuracy"),
                                               ("vqa_2shot", "vqa_2shot", "accuracy"))}
    summary = {"metrics": rows}
    if set(ARMS) <= set(rows):
        ours, base = rows["pformer+blip2"], rows["blip2"]
        summary["pformer_minus_blip2"] = {k: round(ours[k] - base[k], 4) for k in base}
        summary["pformer_over_blip2"] = {k: _ratio(ours[k], base[k]) for k in base}
    return summary


def markdown(results: dict) -> str:
    c = results["config"]
    m = results["model"]
    lines = [
        f"blip2-tiny (ViT {m['vision']}, Q-Former {m['qformer']}, {m['num_query_tokens']} queries, LM {m['lm']}; "
        f"P-Former encoder {m['pformer_encoder']}), batch {c['batch_size']}, "
        f"{c['train_samples']} training pairs; LM {c['lm_steps']} steps, P-Former {c['pformer_steps']}, stage 1 "
        f"{c['stage1_steps']}, stage 2 {c['stage2_steps']}; {c['eval_samples']} held-out samples per split; seed "
        f"{c['seed']}, {c['threads']} thread(s).",
        "",
        "| model | split | caption exact match | CIDEr | VQA 0-shot | VQA 2-shot | stage1 s/step | stage2 s/step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm, r in results["arms"].items():
        for split in SPLITS:
            lines.append(
                f"| {arm} | {split} | {r['captioning'][split]['exact_match']:.3f} "
                f"| {r['captioning'][split]['cider']:.3f} "
                f"| {r['vqa_zero_shot'][split]['accuracy']:.3f} | {r['vqa_2shot'][split]['accuracy']:.3f} "
                f"| {r['stages']['stage1']['step_time_s']:.3f} | {r['stages']['stage2']['step_time_s']:.3f} |")
    brackets = results["vqa_brackets"]
    lines += ["", "| LM alone (VQA brackets) | " + " | ".join(SPLITS) + " |", "|---|" + "---|" * len(SPLITS)]
    for key in ("no_image", "caption_context"):
        lines.append(f"| {key} | " + " | ".join(f"{brackets[s][key]:.3f}" for s in SPLITS) + " |")
    d = results["diagnostics"]
    lines += ["", "Diagnostics: " + ", ".join(f"{k} = {v}" for k, v in d.items()) + "."]
    s = results["stages"]
    lines += [f"Stage costs: LM {s['lm']['wall_s']} s, P-Former stage 0 {s['pformer']['wall_s']} s (text only, "
              f"{s['pformer']['step_time_s']:.3f} s/step, final {s['pformer']['final']})."]
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, help="JSON file to write.")
    parser.add_argument("--steps", type=int, default=None,
                        help="Steps of each BLIP-2 stage (default 500; 3 quick); --stage1_steps/--stage2_steps win.")
    parser.add_argument("--quick", action="store_true", help="Tiny data, few steps: a smoke run in seconds.")
    parser.add_argument("--stage1_steps", type=int, default=None)
    parser.add_argument("--stage2_steps", type=int, default=None)
    parser.add_argument("--lm_steps", type=int, default=None, help="Text-only LM pretraining steps (800; 3 quick).")
    parser.add_argument("--pformer_steps", type=int, default=None, help="P-Former stage-0 steps (400; 3 quick).")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--batch_size", type=int, default=None, help="Default 32 (8 with --quick).")
    parser.add_argument("--train_samples", type=int, default=None, help="Training scenes (default 4000; 32 quick).")
    parser.add_argument("--eval_samples", type=int, default=None, help="Held-out samples per split (200; 8 quick).")
    parser.add_argument("--num_queries", type=int, default=8, help="BLIP-2 query tokens = P-Former prompts.")
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--lm_learning_rate", type=float, default=2e-3)
    parser.add_argument("--max_length", type=int, default=64)
    parser.add_argument("--max_new_tokens", type=int, default=24)
    parser.add_argument("--log_every", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    quick = args.quick
    steps = args.steps if args.steps is not None else (3 if quick else 500)
    defaults = {"stage1_steps": steps, "stage2_steps": steps, "lm_steps": 3 if quick else 800,
                "pformer_steps": 3 if quick else 400, "batch_size": 8 if quick else 32,
                "train_samples": 32 if quick else 4000, "eval_samples": 8 if quick else 200}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.steps = args.stage1_steps
    if args.log_every is None:
        args.log_every = max(1, max(args.stage1_steps, args.lm_steps) // 20)
    if quick:
        args.max_new_tokens = min(args.max_new_tokens, 6)
    return args


def main(argv=None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse_args(argv)
    start = time.perf_counter()
    results = {"benchmark": "pformer_vs_blip2", "steps": args.steps,
               "config": {k: v for k, v in vars(args).items() if k != "output"} | {
                   "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
                   "cpu_count": os.cpu_count(), **source_state(),
                   "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}}
    results.update(run(args))
    results["summary"] = summarize(results)
    results["wall_s"] = round(time.perf_counter() - start, 1)
    results["config"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["markdown"] = markdown(results)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2))
    print(results["markdown"])
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
