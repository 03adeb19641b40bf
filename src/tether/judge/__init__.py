"""AI feedback: a constitution of principles, and judges that label comparison queues under it (`tether judge`).

    constitution.py   the versioned principles file, read strictly (file:line: field errors); the default ships here
    pairwise.py       both-order judging, principles sampled or ensembled, vote parsing (pure Python)
    local.py          a model folder as judge: next-token probabilities of "A" and "B", one forward pass
    remote.py         an OpenAI-compatible endpoint as judge: logprobs when offered, else sampled votes
    report.py         judge_report.json: inconsistency, confidence, agreement with gold and with people
The tiny world's simulated judge is tether.world.judge_sim; the stage is tether.stages.judge.
"""
