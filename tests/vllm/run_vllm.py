"""Runs one vLLM engine on the test prompts and prints its outputs as one JSON line (`RESULT {...}`).

Each scenario runs in its own interpreter (vLLM engines do not shut down cleanly enough to share a process), so
the tests drive this script: `python run_vllm.py '<spec json>'`. spec: model, engine (LLM keyword arguments),
prompts (indices into the family's PROMPTS, default all), calls (generate calls, default 1), max_tokens, family
("llava": tiny_models, "qwen2_5_vl": tiny_qwen).
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tiny_models  # noqa: E402
import tiny_qwen  # noqa: E402


def _metric(llm, name: str) -> float:
    total = 0.0
    for m in llm.get_metrics():
        if m.name == name:
            total += float(getattr(m, "value", 0) or 0)
    return total


def main():
    spec = json.loads(sys.argv[1])
    from vllm import LLM, SamplingParams

    engine = dict(enforce_eager=True, max_model_len=256, dtype="float32", max_num_seqs=4,
                  limit_mm_per_prompt={"image": 2}, disable_log_stats=False)
    engine.update(spec.get("engine", {}))
    llm = LLM(model=spec["model"], **engine)
    family = {"llava": tiny_models, "qwen2_5_vl": tiny_qwen}[spec.get("family", "llava")]
    table, pics = family.PROMPTS, family.images(2)
    prompts = []
    for i in spec.get("prompts", range(len(table))):
        text, count = table[i]
        prompts.append({"prompt": text, "multi_modal_data": {"image": pics[:count]}} if count else {"prompt": text})
    params = SamplingParams(max_tokens=spec.get("max_tokens", 8), temperature=0.0, logprobs=1)
    calls = []
    for _ in range(spec.get("calls", 1)):
        outs = llm.generate(prompts, params, use_tqdm=False)
        calls.append([{"prompt_len": len(o.prompt_token_ids), "tokens": list(o.outputs[0].token_ids),
                       "logprobs": [d[t].logprob for t, d in zip(o.outputs[0].token_ids, o.outputs[0].logprobs)]}
                      for o in outs])
    result = {"calls": calls,
              "prefix_cache_hits": _metric(llm, "vllm:prefix_cache_hits"),
              "preemptions": _metric(llm, "vllm:num_preemptions")}
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
