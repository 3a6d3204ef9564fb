.PHONY: demo demo-keycloak test setup bench
demo:   ## the main job: a CA on SoftHSM, a device certificate issued, checked, revoked
	scripts/demo.sh
demo-keycloak:   ## the demo, then Keycloak: realm, a door lock's bound token, a relying party checking it
	scripts/keycloak.sh install
	scripts/demo-keycloak.sh
test:   ## the whole suite on SQLite and PostgreSQL (installs what is missing)
	scripts/test.sh
setup:
	scripts/setup.sh
bench:
	python3 benchmarks/issue_bench.py
