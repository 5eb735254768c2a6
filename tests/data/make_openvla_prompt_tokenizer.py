"""Writes tests/data/openvla_prompt_tokenizer.json: what the OpenVLA prompt test needs from Llama-2's
tokenizer, measured with OpenVLA's own pin (transformers 4.40.1, tokenizers 0.19).

Run it in a separate venv (`pip install transformers==4.40.1 sentencepiece protobuf`) with a
directory holding Llama-2's `tokenizer.model`:

    python tests/data/make_openvla_prompt_tokenizer.py /path/to/llama-2-tokenizer-dir

It builds the fast tokenizer the way OpenVLA's was made (converted from the sentencepiece model,
then `<PAD>` added as prismatic does), records the ids upstream's `predict_action` feeds the model
for each instruction (README prompt without the trailing space, 29871 appended when missing), and
tokenises one training sequence as upstream's data pipeline writes it (prompt, the action's
characters, `</s>`), and keeps the BPE vocabulary and merges restricted to pieces that occur inside
those prompts. BPE only
ever merges adjacent symbols into a piece of the text, so the restricted tokenizer encodes these
prompts exactly as the full one does, and the test stays offline and small.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

INSTRUCTIONS = (
    "pick coke can", "put the spoon on the towel", "put carrot on plate",
    "stack the green block on the yellow block", "put eggplant into yellow basket", "open top drawer",
    "close middle drawer", "move near the 7up can", "pick up the blue cup and place it in the sink",
)
SPACE_ID = 29871
TRAINING_ACTION_IDS = [31872, 31790, 31999, 31745, 31801, 31900, 31744]  # 6 bin centres, gripper open (1.0)
OUT = Path(__file__).with_name("openvla_prompt_tokenizer.json")


def substrings(text: str) -> set[str]:
    return {text[i:j] for i in range(len(text)) for j in range(i + 1, len(text) + 1)}


def main(tokenizer_dir: str) -> None:
    import transformers
    from transformers import LlamaTokenizerFast

    tok = LlamaTokenizerFast(vocab_file=str(Path(tokenizer_dir) / "tokenizer.model"), legacy=True,
                             from_slow=True)
    tok.add_special_tokens({"pad_token": "<PAD>"})
    prompts = {}
    for instruction in INSTRUCTIONS:
        ids = tok(f"In: What action should the robot take to {instruction}?\nOut:")["input_ids"]
        prompts[instruction] = ids if ids[-1] == SPACE_ID else ids + [SPACE_ID]

    # upstream training: PurePromptBuilder's "In: …?\nOut: " + ActionTokenizer's decoded characters + "</s>"
    instruction = INSTRUCTIONS[2]
    training_text = (f"In: What action should the robot take to {instruction}?\nOut: "
                     + tok.decode(TRAINING_ACTION_IDS) + "</s>")
    training = {"instruction": instruction, "action_ids": TRAINING_ACTION_IDS,
                "input_ids": tok(training_text, add_special_tokens=True)["input_ids"]}

    full = json.loads(tok.backend_tokenizer.to_str())
    # the legacy normaliser turns spaces into "▁" and prepends one; pieces are looked up in that form
    texts = ["▁" + f"In: What action should the robot take to {i}?\nOut: ".replace(" ",
                                                                                   "▁") for i in INSTRUCTIONS]
    wanted = set().union(*map(substrings, texts))
    vocab = full["model"]["vocab"]
    # <unk> <s> </s>, the 256 byte pieces and the 256 action pieces stay whole
    kept = {piece: i for piece, i in vocab.items() if piece in wanted or i < 259 or i >= 31744}
    merges = [m for m in full["model"]["merges"] if "".join(m if isinstance(m,
                                                                            list) else m.split(" ")) in kept]
    full["model"]["vocab"], full["model"]["merges"] = kept, merges
    OUT.write_text(json.dumps({
        "about": f"Llama-2 tokenizer restricted to the pieces of these prompts; ids from transformers "
                 f"{transformers.__version__} with the full tokenizer ({len(vocab)} pieces). "
                 f"Written by {Path(__file__).name}.",
        "prompts": prompts,
        "training": training,
        "tokenizer.json": full,
    }, ensure_ascii=False, indent=1) + "\n")
    print(f"{OUT}: {len(kept)} of {len(vocab)} pieces, {len(merges)} merges, {len(prompts)} prompts")


if __name__ == "__main__":
    main(sys.argv[1])
