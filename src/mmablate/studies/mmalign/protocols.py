"""The benchmarks' own scoring rules and judge prompts, as their authors' evaluation code defines
them (read in the repositories named below; written here, not imported: none is a package).

* POPE — haotian-liu/LLaVA ``llava/eval/eval_pope.py``: the answer's first sentence (text before
  the first '.'), commas removed, split on spaces, is "no" if it holds the word ``No``, ``no``
  or ``not``, else "yes"; per split (random / popular / adversarial) accuracy, precision,
  recall and F1 with "yes" as the positive class, and the yes-ratio.
* TextVQA — LLaVA ``llava/eval/m4c_evaluator.py`` (`TextVQAAccuracyEvaluator`, from
  facebookresearch/mmf): prediction and the 10 human answers normalised as EvalAI does
  (`evalai_normalise`); the score of a prediction is the mean, over the 10 ways of leaving one
  human answer out, of min(1, matching answers among the other 9 / 3).
* GQA — LLaVA ``scripts/convert_gqa_for_eval.py`` + GQA's ``eval.py``: the prediction with
  trailing '.' stripped and lower-cased must equal the answer exactly. The world's word-level
  tokenizer decodes "red ." with a space before the period, so whitespace is stripped too (a
  no-op on LLaVA's own outputs).
* TextVQA and GQA are asked with LLaVA's short-answer instruction (`SHORT_ANSWER`, LLaVA
  ``scripts/v1_5/eval/{textvqa,gqa}.sh`` question files).
* MMHal-Bench — llava-rlhf/LLaVA-RLHF ``Eval/eval_gpt_mmhal.py``: its judge template (below,
  `MMHAL_TEMPLATE`) filled with the image contents (comma-joined), question, standard answer and
  the response, asked of ``gpt-4-0314`` at temperature 0.0 with no ``max_tokens``; the rating is
  the one ``rating: k`` (k = 0…6) found in the lower-cased reply; a reply with none or several
  scores 0 (the script's "multiple or zero scores found" warning), as here; hallucination rate =
  share of ratings < 3.
* LLaVA-Bench (in the wild) — LLaVA ``llava/eval/eval_gpt_review_bench.py`` with
  ``llava/eval/table/rule.json`` (``llava_bench_{conv,detail,complex}``): one text-only request
  per question showing the context captions, the question, the reference (GPT-4) answer as
  Assistant 1 and the model's as Assistant 2, asked of ``gpt-4-0314`` at temperature 0.2 with
  ``max_tokens`` 1024 (``--max-tokens``' default); the first line of the reply, commas replaced
  by spaces and split on single spaces, must be two numbers (``parse_score``), else the pair is
  ``[-1, -1]``, which ``summarize_gpt_review.py`` averages in like any other: the relative score
  is 100 · mean(score 2) / mean(score 1) over all questions. Here likewise.
* MM-Vet — yuweihao/MM-Vet ``mm-vet_evaluator.py``: its few-shot grader prompt followed by
  ``question | ground truth | prediction | `` (``<AND>``/``<OR>`` spaced); the reply's first
  token (``split(" ")[0]``) is a score in [0, 1]; total = 100 · mean score. Asked of
  ``gpt-4-0613`` (``--gpt_model``' default) at temperature 0.0 with ``max_tokens`` 3. On a reply
  that does not read, the evaluator re-asks with `MMVET_RETRY` appended, first at the same
  temperature and then 0.5 higher each time; the replies of re-asks 1–4 are read, the fifth
  re-ask's is not (the loop stops at ``try_time > 5`` before reading it) and the question scores
  0.0. Here the same four re-asks (`MMVET_REASK_OFFSETS`); the fifth, whose reply nothing
  reads, is not sent.

An unparsable reply is scored as each script scores it (`MMHAL_UNPARSED`, `LLAVAW_UNPARSED`,
`MMVET_UNPARSED`) and counted (``judge_unparsed_<benchmark>``, `judge.EndpointJudge`).
"""
from __future__ import annotations

import re

from ...errors import DataError

SHORT_ANSWER = "Answer the question using a single word or phrase."


# ---- POPE -----------------------------------------------------------------------------------
def pope_parse(text: str) -> str:
    """LLaVA's POPE answer rule (module docstring)."""
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "no" in words or "not" in words) else "yes"


def pope_scores(preds, labels) -> dict:
    """Accuracy, precision, recall, F1 (positive = yes) and yes-ratio of one POPE split."""
    tp = sum(p == "yes" and l == "yes" for p, l in zip(preds, labels))
    fp = sum(p == "yes" and l == "no" for p, l in zip(preds, labels))
    tn = sum(p == "no" and l == "no" for p, l in zip(preds, labels))
    fn = sum(p == "no" and l == "yes" for p, l in zip(preds, labels))
    n = len(labels)
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return {"acc": (tp + tn) / n, "f1": f1, "precision": prec, "recall": rec,
            "yes_ratio": (tp + fp) / n, "tp": tp, "fp": fp, "tn": tn, "fn": fn}


# ---- TextVQA (EvalAI normalisation) ----------------------------------------------------------
_CONTRACTIONS = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've "
    "hasn't haven't he'd he'd've he's how'd how'll how's i'd've i'm i've isn't it'd it'd've "
    "it'll mightn't mightn't've might've mustn't must've needn't not've o'clock oughtn't shan't "
    "she'd've she's should've shouldn't shouldn't've somebody'd've somebody'll somebody's "
    "someone'd someone'd've someone'll someone's something'd something'd've something'll "
    "that's there'd there'd've there're there's they'd they'd've they'll they're they've "
    "'twas wasn't we'd've we've weren't what'll what're what's what've when's where'd where's "
    "where've who'd who'd've who'll who's who've why'll why're why's won't would've wouldn't "
    "wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll you're you've").split()
# EvalAI maps the apostrophe-less spelling (and the half-apostrophe spellings of the double
# contractions) to the contraction
CONTRACTIONS = {}
for _c in _CONTRACTIONS:
    CONTRACTIONS[_c.replace("'", "")] = _c
    parts = _c.split("'")
    if len(parts) == 3:  # e.g. couldn't've: "couldnt've" and "couldn'tve"
        CONTRACTIONS[parts[0] + parts[1] + "'" + parts[2]] = _c
        CONTRACTIONS[parts[0] + "'" + parts[1] + parts[2]] = _c
NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
           "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = {"a", "an", "the"}
_PUNCT = list(';/[]"{}()=+\\_-><@`,?!')
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")  # EvalAI's pattern as published (a '.' not before a digit)
_COMMA_NUM = re.compile(r"(?<=\d)(,)+(?=\d)")


def evalai_normalise(ans: str) -> str:
    """EvalAI's answer normalisation (m4c_evaluator.EvalAIAnswerProcessor)."""
    t = ans.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    t = t.replace("\n", " ").replace("\t", " ").strip()
    out = t
    for p in _PUNCT:
        if (p + " " in t or " " + p in t) or _COMMA_NUM.search(t) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    out = _PERIOD.sub("", out)
    words = [NUMBERS.get(w, w) for w in out.lower().split()]
    words = [CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES]
    return " ".join(words)


def textvqa_accuracy(pred: str, answers: list[str]) -> float:
    """TextVQA's soft accuracy of one prediction against its 10 human answers."""
    gts = [evalai_normalise(a) for a in answers]
    p = evalai_normalise(pred)
    accs = [min(1.0, sum(g == p for j, g in enumerate(gts) if j != i) / 3.0)
            for i in range(len(gts))]
    return sum(accs) / len(accs)


# ---- GQA ------------------------------------------------------------------------------------
def gqa_prediction(text: str) -> str:
    """LLaVA's GQA conversion of an answer (trailing '.' off, lower case; whitespace stripped)."""
    return text.strip().rstrip(".").strip().lower()


def gqa_correct(pred: str, answer: str) -> bool:
    return gqa_prediction(pred) == answer


# ---- judge prompts --------------------------------------------------------------------------
MMHAL_TEMPLATE = '''Please act as an impartial and objective judge and evaluate the quality of the response provided by a Large Multimodal Model (LMM) to the user question. Your evaluation should be mainly based on whether the response is informative, and whether the response contains any hallucination. Hallucination, in this context, refers to a situation where the LMM generates a response that includes information not present or implied in the image or previous conversation. A hallucination could be a false claim about an object, action, emotion, or any other detail that is not grounded in the image.

For clarity, consider these examples:

### Example 1:
- Image Contents: Lynx, Cat
- Question: How many cats can you see in this image?
- Standard Human-Generated Answer: There are two cats visible in the image.
- LMM Response to Evaluate: There is one cat in the image.
- Analysis: The LMM's response is false because it claims there is only one cat in the image, when in fact there are two.
- Hallucination: Yes.

### Example 2:
- Image Contents: Tree, Plant, Panda, Animal
- Question: What can you see from this photo?
- Standard Human-Generated Answer: In this photo we can see branches. We can see a panda on a branch. The background is blurry.
- LMM Response to Evaluate: In the photo, I can see a large black and white panda sitting on a tree branch. The image captures the panda's unique appearance and its natural habitat, showcasing the beauty and rarity of these animals.
- Analysis: The LMM's response is not false because it does not make any false claims about the image contents. For example, it does not claim that the panda is eating bamboo.
- Hallucination: No.

### Example 3:
- Image Contents: Fashion accessory, Mammal, Dog, Umbrella
- Question: Describe this image in details.
- Standard Human-Generated Answer: In this picture I can see a dog laying under a yellow umbrella on a beach, and there is a rope on the right side. In the background I can see few persons talking or lying. At the top of the image, I can see the blue and clear sky.
- LMM Response to Evaluate: The image features a brown dog laying on the sand at the beach, underneath a yellow umbrella. The dog is positioned near the water, and there are people in the background. The beach is sandy, and the sun is shining, creating a pleasant atmosphere. The dog is enjoying the shade provided by the umbrella, which is a common way to protect pets from the sun's harmful rays. The presence of people in the background suggests that the beach is a popular spot for leisure activities, such as sunbathing, swimming, and relaxing.
- Analysis: The LMM's response is false because it claims that the dog is positioned near the water, but there is no water in the image.
- Hallucination: Yes.

### Example 4:
- Image Contents: Clothing, Luggage and bags, Man, Building, Woman, Person
- Question: Where is this photo taken?
- Standard Human-Generated Answer: From the slogan "Welcome to Houston, Texas", we can infer that this photo is taken at an airport in Houston, Texas.
- LMM Response to Evaluate: This photo is taken at an airport, specifically at the entrance of a terminal. However, the specific location of this airport cannot be determined from the image.
- Analysis: Although the LMM's response does not explicitly mention the location "Houston, Texas" and does not perfectly answer the question, it makes no false claims about the image contents. Therefore, this response is not considered hallucination. It is OK if the LMM fails to directly answer the question, expresses uncertainty, or cannot include all the objects or details in the human-generated answer.
- Hallucination: No.

### Example 5:
- Image Contents: Tree, Tower
- Question: What environmental concerns are involved in this photo?
- Standard Human-Generated Answer: This photo shows a smokestack emitting smoke. It may cause severe air pollution which threatens human health.
- LMM Response to Evaluate: In the photo, there are several environmental concerns related to the smokestack emitting smoke. The smoke from the smokestack is a byproduct of industrial processes, which can contribute to air pollution, climate change, and negative impacts on human health. The smoke contains harmful pollutants, such as particulate matter, sulfur dioxide, nitrogen oxides, and carbon monoxide, which can lead to respiratory problems, heart disease, and other health issues. Additionally, the smoke contributes to the greenhouse effect, which can lead to global warming and climate change. The smokestack's emissions also affect the environment, as they can harm wildlife, vegetation, and ecosystems. Therefore, it is essential to address these environmental concerns by implementing measures to reduce emissions and promote sustainable practices in industrial processes.
- Analysis: Although the LMM's response is significantly longer than the standard human-generated answer, it does not contain any false claims about the image contents. Instead, it provides additional general information about the environmental concerns, which can be inferred from the smoke emission. Such detailed analysis or reasoning should be considered as a positive aspect, as long as it contains no false claims.
- Hallucination: No.

With these examples in mind, please help me evaluate whether the response by the LMM is informative, and whether hallucination exists in it, based on the comparison between the LMM's response and the factual information provided in the image contents, question, and the standard human-generated answer below.

Please note that the standard human-generated answer may only contain factual information but may not give a detailed analysis. Also, the standard human-generated answer may not be completely comprehensive in describing all the objects and their attributes, so please be a bit more cautious during evalutation. LMM's detailed analysis or reasoning should be encouraged.

To evaluate the LMM responses, first, begin your evaluation by providing a short explanation. Second, after providing your explanation, you must rate the response by choosing from the following options:
- Rating: 6, very informative with good analysis or reasoning, no hallucination
- Rating: 5, very informative, no hallucination
- Rating: 4, somewhat informative, no hallucination
- Rating: 3, not informative, no hallucination
- Rating: 2, very informative, with hallucination
- Rating: 1, somewhat informative, with hallucination
- Rating: 0, not informative, with hallucination

### Image Contents
{}

### Question
{}

### Standard Human-Generated Answer
{}

### LMM Response to Evaluate
{}
'''

LLAVA_BENCH_SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."
LLAVA_BENCH_RULE = (
    "We would like to request your feedback on the performance of two AI assistants in response "
    "to the user question displayed above. The user asks the question on observing an image. For "
    "your reference, the visual content in the image is represented with a few sentences "
    "describing the image. \nPlease rate the helpfulness, relevance, accuracy, level of details "
    "of their responses. Each assistant receives an overall score on a scale of 1 to 10, where a "
    "higher score indicates better overall performance.\nPlease first output a single line "
    "containing only two values indicating the scores for Assistant 1 and 2, respectively. The "
    "two scores are separated by a space.\nIn the subsequent line, please provide a comprehensive "
    "explanation of your evaluation, avoiding any potential bias and ensuring that the order in "
    "which the responses were presented does not affect your judgment.")

MMVET_PROMPT = """Compare the ground truth and prediction from AI models, to give a correctness score for the prediction. <AND> in the ground truth means it is totally right only when all elements in the ground truth are present in the prediction, and <OR> means it is totally right when any one element in the ground truth is present in the prediction. The correctness score is 0.0 (totally wrong), 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, or 1.0 (totally right). Just complete the last space of the correctness score.

Question | Ground truth | Prediction | Correctness
--- | --- | --- | ---
What is x in the equation? | -1 <AND> -5 | x = 3 | 0.0
What is x in the equation? | -1 <AND> -5 | x = -1 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -5 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -5 or 5 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -1 or x = -5 | 1.0
Can you explain this meme? | This meme is poking fun at the fact that the names of the countries Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green landscapes, while Greenland is mostly covered in ice and snow. The meme is saying that the person has trust issues because the names of these countries do not accurately represent their landscapes. | The meme talks about Iceland and Greenland. It's pointing out that despite their names, Iceland is not very icy and Greenland isn't very green. | 0.4
Can you explain this meme? | This meme is poking fun at the fact that the names of the countries Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green landscapes, while Greenland is mostly covered in ice and snow. The meme is saying that the person has trust issues because the names of these countries do not accurately represent their landscapes. | The meme is using humor to point out the misleading nature of Iceland's and Greenland's names. Iceland, despite its name, has lush green landscapes while Greenland is mostly covered in ice and snow. The text 'This is why I have trust issues' is a playful way to suggest that these contradictions can lead to distrust or confusion. The humor in this meme is derived from the unexpected contrast between the names of the countries and their actual physical characteristics. | 1.0
"""


def mmhal_request(image_content, question, gt_answer, response) -> list[dict]:
    content = ", ".join(image_content) if isinstance(image_content, list) else str(image_content)
    return [{"role": "user",
             "content": MMHAL_TEMPLATE.format(content, question, gt_answer, response)}]


def llavaw_request(context, question, reference, response) -> list[dict]:
    ctx = "\n".join(context) if isinstance(context, list) else str(context)
    role = "Assistant"
    content = (f"[Context]\n{ctx}\n\n[Question]\n{question}\n\n"
               f"[{role} 1]\n{reference}\n\n[End of {role} 1]\n\n"
               f"[{role} 2]\n{response}\n\n[End of {role} 2]\n\n"
               f"[System]\n{LLAVA_BENCH_RULE}\n\n")
    return [{"role": "system", "content": LLAVA_BENCH_SYSTEM}, {"role": "user", "content": content}]


MMVET_RETRY = "\nPredict the correctness of the answer (digit): "
# MM-Vet's re-asks whose replies are read, their temperatures above the request's own (the first
# at it, then +0.5 each: mm-vet_evaluator.py re-asks, then ``temperature += 0.5``)
MMVET_REASK_OFFSETS = (0.0, 0.5, 1.0, 1.5)

# the published scores of a reply that does not read
MMHAL_UNPARSED = 0                  # eval_gpt_mmhal.py: "multiple or zero scores found" -> 0
LLAVAW_UNPARSED = (-1.0, -1.0)      # eval_gpt_review_bench.py parse_score -> [-1, -1]
MMVET_UNPARSED = 0.0                # mm-vet_evaluator.py: after the re-asks -> 0.0


def mmvet_request(question, gt_answer, response, retry: bool = False) -> list[dict]:
    """MM-Vet's grading request; `retry`: the evaluator's re-ask (`MMVET_RETRY` appended)."""
    gt = gt_answer.replace("<AND>", " <AND> ").replace("<OR>", " <OR> ")
    return [{"role": "user", "content": MMVET_PROMPT + "\n" + " | ".join(
        [question, gt, response, ""]) + (MMVET_RETRY if retry else "")}]


def _bad(bench, qid, reply, why):
    return DataError(f"{bench}: question {qid}: malformed judge answer ({why}): {reply[:200]!r}")


def read_mmhal(reply: str) -> int | None:
    """The one ``rating: k`` (k = 0–6) in the lower-cased reply; None when none or several."""
    found = [k for k in range(7) if f"rating: {k}" in reply.lower()]
    return found[0] if len(found) == 1 else None


def read_llavaw(reply: str) -> tuple[float, float] | None:
    """LLaVA's ``parse_score``: the reply's first line, commas to spaces, split on single spaces,
    must be exactly two numbers; None otherwise (the script's ``[-1, -1]``)."""
    sp = reply.split("\n")[0].replace(",", " ").split(" ")
    if len(sp) != 2:
        return None
    try:
        return float(sp[0]), float(sp[1])
    except ValueError:
        return None


def read_mmvet(reply: str) -> float | None:
    """MM-Vet's reading of a grade: ``float(reply.split(" ")[0].strip())`` in [0, 1]; else None."""
    try:
        v = float(reply.split(" ")[0].strip())
    except ValueError:
        return None
    return v if 0.0 <= v <= 1.0 else None


# strict versions (the judge stand-in's tests: its replies must read)
def parse_mmhal(reply: str, bench="mmhal", qid=None) -> int:
    v = read_mmhal(reply)
    if v is None:
        n = sum(f"rating: {k}" in reply.lower() for k in range(7))
        raise _bad(bench, qid, reply, f"{'no' if not n else 'several'} 'Rating: k' (k = 0-6)")
    return v


def parse_llavaw(reply: str, bench="llavaw", qid=None) -> tuple[float, float]:
    v = read_llavaw(reply)
    if v is None:
        raise _bad(bench, qid, reply, "the first line must be two scores")
    return v


def parse_mmvet(reply: str, bench="mmvet", qid=None) -> float:
    v = read_mmvet(reply)
    if v is None:
        raise _bad(bench, qid, reply, "not a number in [0, 1]")
    return v
