"""The reference side of the parity tests: the same tiny checkpoint in transformers with
``restore_ext.integrations.transformers.apply_restore``, greedy, with each generated token's log-probability."""
from __future__ import annotations

import torch

from tiny_models import PROMPTS, images


def restore_greedy(model_dir: str, num_tokens: int, max_tokens: int, prompt_indices=(0, 1)) -> list[dict]:
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from restore_ext.integrations.transformers import apply_restore

    proc = AutoProcessor.from_pretrained(model_dir)
    model = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    apply_restore(model, num_tokens=num_tokens)
    pics = images(2)
    out = []
    for i in prompt_indices:
        text, count = PROMPTS[i]
        inputs = proc(text=text, images=pics[:count] or None, return_tensors="pt")
        with torch.no_grad():
            gen = model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False, output_scores=True,
                                 return_dict_in_generate=True)
        tokens = gen.sequences[0, inputs["input_ids"].shape[1]:].tolist()
        logprobs = [torch.log_softmax(s[0].double(), -1)[t].item() for s, t in zip(gen.scores, tokens)]
        out.append({"tokens": tokens, "logprobs": logprobs})
    return out


def restore_greedy_qwen(model_dir: str, num_tokens: int, max_tokens: int, calibrate: bool,
                        prompt_indices=(0, 1)) -> list[dict]:
    """The same for the tiny Qwen2.5-VL (tiny_qwen.PROMPTS), one prompt at a time."""
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from restore_ext.integrations.transformers import apply_restore
    from tiny_qwen import PROMPTS as QWEN_PROMPTS, images as qwen_images

    proc = AutoProcessor.from_pretrained(model_dir)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    apply_restore(model, num_tokens=num_tokens, calibrate=calibrate)
    pics = qwen_images(2)
    out = []
    for i in prompt_indices:
        text, count = QWEN_PROMPTS[i]
        inputs = proc(text=text, images=pics[:count] or None, return_tensors="pt")
        with torch.no_grad():
            gen = model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False,
                                 output_scores=True, return_dict_in_generate=True)
        tokens = gen.sequences[0, inputs["input_ids"].shape[1]:].tolist()
        logprobs = [torch.log_softmax(s[0].double(), -1)[t].item() for s, t in zip(gen.scores, tokens)]
        out.append({"tokens": tokens, "logprobs": logprobs})
    return out
