# T-Developer state platform — the only door. `make help` lists the targets.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

ENV ?= local
UV ?= $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
RUN := $(UV) run --frozen
LS := bash localstack/localstack.sh
export AWS_DEFAULT_REGION ?= us-east-1

# Colour only on a terminal and never under NO_COLOR (https://no-color.org): `make help | less` stays plain.
.PHONY: help
help: ## List the targets
	@if [ -t 1 ] && [ -z "$${NO_COLOR:-}" ]; then on=$$'\033[36m'; off=$$'\033[0m'; else on=; off=; fi; \
	grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | \
	awk -v on="$$on" -v off="$$off" 'BEGIN {FS = ":.*?## "}; {printf "  %s%-18s%s %s\n", on, $$1, off, $$2}'

# Targets depend on `venv`; only what needs this machine's LocalStack reaches it, through
# scripts/with-localstack.sh (which installs and starts it on first use, and never when AWS_ENDPOINT_URL
# points at another endpoint).
.PHONY: venv
venv: ## Install uv and the workspace venv (frozen uv.lock); idempotent
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	@$(UV) sync --frozen --all-packages

.PHONY: setup
setup: venv ## venv + the LocalStack runtime (make test, make demo); idempotent
	@$(LS) install

.PHONY: lint
lint: venv ## ruff check + format check, the import contracts (.importlinter) and the size check
	@$(RUN) ruff check .
	@$(RUN) ruff format --check .
	@$(RUN) lint-imports --no-cache
	@$(RUN) python scripts/check_sizes.py

.PHONY: fmt
fmt: venv ## Apply ruff's fixes and formatting
	@$(RUN) ruff check --fix .
	@$(RUN) ruff format .

.PHONY: typecheck
typecheck: venv ## mypy --strict over the three packages
	@$(RUN) mypy

.PHONY: test-unit
test-unit: venv ## Unit tests (moto, no network)
	@$(RUN) pytest -m unit -q -p no:cacheprovider -n 2 --dist loadfile

.PHONY: test-integration
test-integration: venv ## Integration tests against LocalStack (started and stopped here) or $$AWS_ENDPOINT_URL; the chaos test at 200 runs (make chaos: 500)
	@bash scripts/ensure-browser.sh
	@TDEV_CHAOS_RUNS=$${TDEV_CHAOS_RUNS:-200} bash scripts/with-localstack.sh $(RUN) pytest -m integration -q -p no:cacheprovider --durations=15

.PHONY: test
test: ## lint + typecheck + unit + integration (starts and stops LocalStack)
	@bash scripts/timed.sh setup $(MAKE) --no-print-directory setup
	@bash scripts/timed.sh lint $(MAKE) --no-print-directory lint
	@bash scripts/timed.sh typecheck $(MAKE) --no-print-directory typecheck
	@bash scripts/timed.sh test-unit $(MAKE) --no-print-directory test-unit
	@bash scripts/timed.sh test-integration $(MAKE) --no-print-directory test-integration

.PHONY: localstack-up
localstack-up: ## Start LocalStack (Docker if an engine answers, host mode otherwise); idempotent
	@$(LS) up

.PHONY: localstack-down
localstack-down: ## Stop the LocalStack that localstack-up started (pid file, never by name)
	@$(LS) down

.PHONY: localstack-logs
localstack-logs: ## Show LocalStack's log
	@$(LS) logs

.PHONY: tables
tables: venv ## Create the tables for ENV on $$AWS_ENDPOINT_URL (idempotent)
	@$(RUN) tdev --env $(ENV) tables create

.PHONY: bench
bench: venv ## Benchmarks on LocalStack (results: docs/benchmarks.md)
	@bash scripts/with-localstack.sh $(RUN) python -m benchmarks

.PHONY: synth
synth: venv ## Synthesize the local, dev and prod stacks (cdktf CLI; no Terraform needed) into infra/cdktf.out
	@bash infra/cdktf.sh synth

.PHONY: diff deploy destroy
diff deploy destroy: venv ## cdktf diff/deploy/destroy of ENV=local|dev|prod (Terraform >= 1.10; dev/prod checked first; AUTO_APPROVE=1)
	@bash infra/cdktf.sh $@

.PHONY: bootstrap
bootstrap: venv ## Create ENV's Terraform state bucket once (versioned, encrypted, TLS-only, private); dev|prod
	@$(RUN) python -m tdev_infra.preflight $(ENV) --bootstrap

.PHONY: image
image: venv ## Build the recovery worker's image and push it to ENV's ECR repository (Docker or Podman)
	@$(RUN) python -m tdev_infra.image $(ENV)

.PHONY: output
output: venv ## Write the clients' env file (infra/ENV.env) from the deployed stack's outputs
	@$(RUN) python -m tdev_infra.output $(ENV)

.PHONY: cdktn-migrate
cdktn-migrate: ## Move infra from CDKTF (archived) to CDK Terrain: packages, imports, CLI, tests (see the script)
	@bash infra/migrate-to-cdktn.sh

.PHONY: checkov
checkov: venv ## Synthesize and scan every stack with checkov (what the infra tests run)
	@$(RUN) pytest tests/unit/infra/test_checkov.py -q -p no:cacheprovider

.PHONY: chaos
chaos: venv ## The fault tests on LocalStack, reported: lost / double-counted / resumed twice (docs/reliability.md)
	@bash scripts/with-localstack.sh $(RUN) python -m chaos

.PHONY: console
console: venv ## The web console on the local LocalStack's tables (ENV=local), with actions: http://127.0.0.1:8080
	@bash scripts/with-localstack.sh $(RUN) tdev console --env $(ENV) --local --allow-actions $(CONSOLE_ARGS)

.PHONY: demo
demo: venv ## The whole system on LocalStack with faults on purpose; report in reports/demo/index.html
	@TDEV_KEEP_LOCALSTACK=1 bash scripts/with-localstack.sh $(RUN) python -m demo $(DEMO_ARGS)

.PHONY: clean
clean: localstack-down ## Stop LocalStack and remove caches (keeps the LocalStack runtime)
	@rm -rf .pytest_cache .mypy_cache .ruff_cache reports
