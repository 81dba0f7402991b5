"""restore_ext's lmms-eval models (restore_ext.integrations.lmms_eval), offline: the entry points resolve, and tiny
random-weight LLaVA, Qwen2.5-VL and Qwen3-VL checkpoints made here run lmms-eval's simple_evaluate end to end on a
local task whose images and questions are generated here. Runs where lmms-eval is installed (`make test-eval`);
skipped elsewhere.
"""
import importlib.metadata
import inspect
import textwrap

import pytest
import torch

lmms_eval = pytest.importorskip("lmms_eval")
datasets = pytest.importorskip("datasets")

from lmms_eval.evaluator import simple_evaluate  # noqa: E402
from lmms_eval.models import get_model, get_model_manifest  # noqa: E402
from lmms_eval.tasks import TaskManager  # noqa: E402

from restore_ext.integrations import lmms_eval as rle  # noqa: E402
from restore_ext.integrations.transformers import apply_restore, is_restore_applied  # noqa: E402

N = 64  # visual tokens of the tiny tower: 112 px / patch 14 = 8 x 8
TASK = "restore_tiny_yesno"
# content as a string (lmms-eval's simple classes) or a list of image / text parts (its chat classes)
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'].upper() + ': ' }}{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}{{ '<image>\n' }}{% elif c['type'] == 'text' %}"
    "{{ c['text'] }}{% endif %}{% endfor %}{% endif %}{{ ' ' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def tiny_llava_checkpoint(path):
    """A LLaVA-1.5-shaped checkpoint with random weights and its processor (CLIP image processor, a byte-level
    BPE tokenizer trained here on a few sentences), saved as lmms-eval's llava_hf loads it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast)

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<pad>", "<s>", "</s>", "<image>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["USER: Is there a red square in the image? Answer yes or no. ASSISTANT: yes no"] * 4,
                            trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                        extra_special_tokens={"image_token": "<image>"})
    image_processor = CLIPImageProcessor(size={"shortest_edge": 112}, crop_size={"height": 112, "width": 112})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=CHAT_TEMPLATE)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=2, image_size=112, patch_size=14),
        text_config=LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=512,
                                pad_token_id=tokenizer.pad_token_id),
        image_token_id=image_id, vision_feature_layer=-2, vision_feature_select_strategy="default",
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN_PIXELS = "min_pixels=3136,max_pixels=12544"  # 112 x 112 images: 8 x 8 patches, 16 tokens after the merger


QWEN3_PIXELS = "min_pixels=4096,max_pixels=16384"  # Qwen3-VL (patch 16): 112 px -> 128 x 128, 16 tokens again
QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                "<|video_pad|>"]


def tiny_qwen_tokenizer():
    """A byte-level BPE tokenizer trained here on a few sentences, with Qwen's special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=QWEN_SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["user Is there a red square in the image? Answer yes or no. assistant yes no"] * 4,
                            trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        extra_special_tokens={"image_token": "<|image_pad|>",
                                                              "video_token": "<|video_pad|>"})
    tokenizer.chat_template = QWEN_TEMPLATE
    return tokenizer, {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL}


def tiny_qwen_text_config(vocab_size, ids, **rope):
    return dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=vocab_size, max_position_embeddings=512,
                bos_token_id=ids["<|im_start|>"], eos_token_id=ids["<|im_end|>"],
                rope_parameters=dict(rope_type="default", rope_theta=10000.0, **rope))


def tiny_qwen_ids(ids):
    return dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
                pad_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"])


def save_qwen_checkpoint(path, model, processor, tokenizer):
    model.eval().save_pretrained(path)
    processor.save_pretrained(path)
    tokenizer.save_pretrained(path)  # lmms-eval's Qwen classes load the tokenizer on its own
    return str(path)


def tiny_qwen2_5_vl_checkpoint(path):
    """A Qwen2.5-VL-shaped checkpoint with random weights (M-RoPE sections [2, 3, 3] of head dim 16) and its
    processor, saved as lmms-eval's qwen2_5_vl loads it."""
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor,
                              Qwen2VLImageProcessor, Qwen2VLVideoProcessor)

    tokenizer, ids = tiny_qwen_tokenizer()
    pixels = dict(min_pixels=56 * 56, max_pixels=112 * 112, patch_size=14, merge_size=2, temporal_patch_size=2)
    processor = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(**pixels), tokenizer=tokenizer,
                                    video_processor=Qwen2VLVideoProcessor(**pixels), chat_template=QWEN_TEMPLATE)
    config = Qwen2_5_VLConfig(
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                           fullatt_block_indexes=[0]),
        text_config=tiny_qwen_text_config(len(tokenizer), ids, mrope_section=[2, 3, 3]), **tiny_qwen_ids(ids),
    )
    torch.manual_seed(0)
    return save_qwen_checkpoint(path, Qwen2_5_VLForConditionalGeneration(config), processor, tokenizer)


def tiny_qwen3_vl_checkpoint(path):
    """A Qwen3-VL-shaped checkpoint with random weights (patch 16, DeepStack from vision blocks 0 and 1 into
    decoder layers 0 and 1, interleaved M-RoPE sections [4, 2, 2] of head dim 16; the sizes of tests/qwen_models.py)
    and its processor, saved as lmms-eval's qwen3_vl loads it."""
    from transformers import (Qwen2VLImageProcessor, Qwen3VLConfig, Qwen3VLForConditionalGeneration,
                              Qwen3VLProcessor, Qwen3VLVideoProcessor)

    tokenizer, ids = tiny_qwen_tokenizer()
    pixels = dict(min_pixels=64 * 64, max_pixels=128 * 128, patch_size=16, merge_size=2, temporal_patch_size=2)
    processor = Qwen3VLProcessor(image_processor=Qwen2VLImageProcessor(**pixels), tokenizer=tokenizer,
                                 video_processor=Qwen3VLVideoProcessor(**pixels), chat_template=QWEN_TEMPLATE)
    config = Qwen3VLConfig(
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
                           deepstack_visual_indexes=[0, 1]),
        text_config=dict(tiny_qwen_text_config(len(tokenizer), ids, mrope_section=[4, 2, 2], mrope_interleaved=True),
                         head_dim=16),
        **tiny_qwen_ids(ids),
    )
    torch.manual_seed(0)
    return save_qwen_checkpoint(path, Qwen3VLForConditionalGeneration(config), processor, tokenizer)


def local_task(folder, count=4):
    """A yes/no task in lmms-eval's yaml form over a dataset saved to disk: images with or without a red square."""
    from PIL import Image, ImageDraw

    images, questions, answers = [], [], []
    for i in range(count):
        img = Image.new("RGB", (112, 112), (40 + 40 * i, 120, 200 - 30 * i))
        if i % 2 == 0:
            ImageDraw.Draw(img).rectangle((20 + 10 * i, 30, 60 + 10 * i, 70), fill=(230, 20, 20))
        images.append(img)
        questions.append("Is there a red square in the image?")
        answers.append("yes" if i % 2 == 0 else "no")
    features = datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"),
                                  "answer": datasets.Value("string")})
    data = datasets.Dataset.from_dict(dict(image=images, question=questions, answer=answers), features=features)
    datasets.DatasetDict(test=data).save_to_disk(str(folder / "data"))
    (folder / "tiny_utils.py").write_text(textwrap.dedent("""
        def doc_to_visual(doc):
            return [doc["image"].convert("RGB")]

        def doc_to_text(doc, lmms_eval_specific_kwargs=None):
            return doc["question"] + " Answer yes or no."

        def process_results(doc, results):
            return {"accuracy": float(results[0].strip().lower() == doc["answer"])}
    """))
    (folder / f"{TASK}.yaml").write_text(textwrap.dedent(f"""
        task: {TASK}
        dataset_path: {folder / "data"}
        dataset_kwargs:
          load_from_disk: true
        test_split: test
        output_type: generate_until
        doc_to_visual: !function tiny_utils.doc_to_visual
        doc_to_text: !function tiny_utils.doc_to_text
        doc_to_target: answer
        generation_kwargs:
          max_new_tokens: 3
          temperature: 0
          do_sample: false
        process_results: !function tiny_utils.process_results
        metric_list:
          - metric: accuracy
            aggregation: mean
            higher_is_better: true
    """))
    return TaskManager(include_path=str(folder))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_llava_checkpoint(tmp_path_factory.mktemp("llava"))


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    return local_task(tmp_path_factory.mktemp("task"))


def evaluate(lm, tasks, **kw):
    return simple_evaluate(model=lm, tasks=[TASK], task_manager=tasks, batch_size=1, device="cpu",
                           bootstrap_iters=0, **kw)


def prefill_lengths(lm):
    """Sequence lengths the language model sees on each prefill (more than one new token)."""
    seen = []

    def hook(module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        if embeds is not None and embeds.shape[1] > 1:
            seen.append(embeds.shape[1])

    return seen, lm.model.model.language_model.register_forward_pre_hook(hook, with_kwargs=True)


def test_entry_point_resolves_every_model():
    eps = [ep for ep in importlib.metadata.entry_points(group="lmms_eval.models") if ep.name == "restore"]
    assert len(eps) == 1 and eps[0].load() is rle.manifests
    for model_id, (base_id, chat, simple) in rle.MODELS.items():
        manifest = get_model_manifest(model_id)
        assert manifest.chat_class_path == f"{rle.__name__}.{chat}"
        assert manifest.simple_class_path == f"{rle.__name__}.{simple}"
        for force_simple in (False, True):
            cls = get_model(model_id, force_simple=force_simple)
            base = get_model(base_id, force_simple=force_simple)
            assert issubclass(cls, base) and cls is not base and cls.is_simple == base.is_simple


@pytest.mark.parametrize("model_id", ["restore_llava_hf"])
@pytest.mark.parametrize("force_simple", [False, True])
def test_simple_evaluate_end_to_end_runs_restore(checkpoint, tasks, model_id, force_simple):
    cls = get_model(model_id, force_simple=force_simple)
    lm = cls.create_from_arg_string(
        f"pretrained={checkpoint},device_map=cpu,num_tokens=16,base=divprune,keep_ratio=0.5",
        {"batch_size": 1, "device": "cpu"})
    assert is_restore_applied(lm.model) and lm.restore_settings == dict(num_tokens=16, base="divprune", keep_ratio=0.5)
    seen, handle = prefill_lengths(lm)
    try:
        out = evaluate(lm, tasks, log_samples=True)
    finally:
        handle.remove()
    assert 0.0 <= out["results"][TASK]["accuracy,none"] <= 1.0
    samples = out["samples"][TASK]
    assert len(samples) == 4 and all(isinstance(s["resps"][0][0], str) for s in samples)
    # every prompt reached the LLM with its 64 image tokens reduced to 16 (so 48 fewer)
    full = get_model("llava_hf", force_simple=force_simple).create_from_arg_string(
        f"pretrained={checkpoint},device_map=cpu", {"batch_size": 1, "device": "cpu"})
    seen_full, handle = prefill_lengths(full)
    try:
        evaluate(full, tasks)
    finally:
        handle.remove()
    assert len(seen) == len(seen_full) == 4
    assert sorted(seen) == sorted(n - (N - 16) for n in seen_full)


QWEN_CASES = {  # model id -> (checkpoint builder, pixel bounds as model args)
    "qwen2_5_vl": (tiny_qwen2_5_vl_checkpoint, QWEN_PIXELS),
    "qwen3_vl": (tiny_qwen3_vl_checkpoint, QWEN3_PIXELS),
}


@pytest.mark.parametrize("family", list(QWEN_CASES))
@pytest.mark.parametrize("calibrate", [False, True])
def test_qwen_end_to_end(tasks, tmp_path_factory, family, calibrate):
    """restore_qwen2_5_vl / restore_qwen3_vl shorten every prompt's 16 image tokens to 8 where lmms-eval's own
    qwen2_5_vl / qwen3_vl keep them, with the M-RoPE calibration (calibrate=True) and without it (reduction and
    preserved positions alone)."""
    build, pixels = QWEN_CASES[family]
    ckpt = build(tmp_path_factory.mktemp(family))
    args, extra = f"pretrained={ckpt},device_map=cpu,{pixels}", {"batch_size": 1, "device": "cpu"}
    lm = get_model(f"restore_{family}").create_from_arg_string(args + f",num_tokens=8,calibrate={calibrate}", extra)
    assert is_restore_applied(lm.model)
    runs = {}
    for name, model in (("restore", lm), ("full", get_model(family).create_from_arg_string(args, extra))):
        runs[name], handle = prefill_lengths(model)
        try:
            out = evaluate(model, tasks, log_samples=True)
        finally:
            handle.remove()
        samples = out["samples"][TASK]
        assert len(samples) == 4 and all(isinstance(s["resps"][0][0], str) for s in samples)
        assert 0.0 <= out["results"][TASK]["accuracy,none"] <= 1.0
    assert len(runs["full"]) == 4 and sorted(runs["restore"]) == sorted(n - 8 for n in runs["full"])


def test_generate_error_fails_the_run_instead_of_empty_answers(checkpoint, tasks):
    lm = get_model("restore_llava_hf").create_from_arg_string(f"pretrained={checkpoint},device_map=cpu,num_tokens=16",
                                                              {"batch_size": 1, "device": "cpu"})
    # beam search is refused inside apply_restore's generate guard; lmms-eval alone would log it and score ""
    with pytest.raises(RuntimeError, match="generate failed under RESTORE for 4 request.*beam search"):
        evaluate(lm, tasks, gen_kwargs="num_beams=2")


def test_model_args_are_checked(checkpoint):
    cls = get_model("restore_llava_hf")
    with pytest.raises(ValueError, match="give num_tokens or ratio, not both"):
        cls.create_from_arg_string(f"pretrained={checkpoint},device_map=cpu,num_tokens=16,ratio=0.25",
                                   {"device": "cpu"})
    with pytest.raises(ValueError, match="apply_restore: keep_ratio must"):
        cls.create_from_arg_string(f"pretrained={checkpoint},device_map=cpu,keep_ratio=1.5", {"device": "cpu"})
    if "ratio" not in inspect.signature(apply_restore).parameters:  # until the dynamic-resolution budget lands
        with pytest.raises(ValueError, match=r"does not take \['ratio'\]"):
            cls.create_from_arg_string(f"pretrained={checkpoint},device_map=cpu,ratio=0.25", {"device": "cpu"})
    lm = cls.create_from_arg_string(  # the base method alone, as eval_paper.sh runs it
        f"pretrained={checkpoint},device_map=cpu,num_tokens=8,keep_ratio=1.0,calibrate=False", {"device": "cpu"})
    assert lm.restore_settings == dict(num_tokens=8, keep_ratio=1.0, calibrate=False)


def test_eval_paper_script_end_to_end(checkpoint, tmp_path_factory):
    """scripts/eval_paper.sh through lmms-eval's CLI on the local task: full, base alone and RESTORE at one budget,
    then the summary table."""
    import os
    import subprocess
    import sys

    task_dir = tmp_path_factory.mktemp("cli_task")
    local_task(task_dir, count=2)
    out = tmp_path_factory.mktemp("cli_out")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TASKS=TASK, BUDGETS="16", MODEL_ARGS="device_map=cpu",
               LAUNCH=f"{sys.executable} -m lmms_eval",
               EXTRA_ARGS=f"--include_path {task_dir} --device cpu",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    proc = subprocess.run(["bash", os.path.join(root, "scripts", "eval_paper.sh"), checkpoint, str(out)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = (out / "summary.md").read_text().splitlines()
    assert table[0] == f"| variant | {TASK} (accuracy) | avg. relative to full |"
    assert [row.split(" | ")[0] for row in table[2:]] == ["| full", "| base-16", "| restore-16"]
    assert table[2].endswith("| 100.0 % |") or table[2].endswith("| n/a |")  # n/a: the random model scored 0


def test_summary_table_relative_scores():
    runs = {
        "full": {"pope": {"alias": "pope", "pope_f1_score,none": 0.8, "pope_f1_score_stderr,none": "N/A"},
                 "mme": {"mme_perception_score,none": 1500.0, "mme_cognition_score,none": 300.0}},
        "restore-64": {"pope": {"pope_f1_score,none": 0.76}, "mme": {"mme_perception_score,none": 1425.0}},
        "base-64": {"pope": {"pope_f1_score,none": 0.72}},
    }
    lines = rle.summary_table(runs).splitlines()
    assert lines[0] == "| variant | mme (mme_perception_score) | pope (pope_f1_score) | avg. relative to full |"
    assert lines[2] == "| full | 1500 | 0.8 | 100.0 % |"
    assert lines[3] == "| restore-64 | 1425 | 0.76 | 95.0 % |"
    assert lines[4] == "| base-64 |  | 0.72 | n/a |"  # a missing benchmark: no average
