# `make test`: run the transform over sample.txt through wasmstream and compare with expected.txt.
# WASMSTREAM may name another command, e.g. WASMSTREAM="python3 -m wasmstream"; RUNFLAGS adds
# run options, e.g. make test RUNFLAGS='--framing lines --config ERROR'.
WASMSTREAM ?= wasmstream
RUNFLAGS ?=

test: $(NAME).wasm
	$(WASMSTREAM) run $(NAME).wasm sample.txt $(RUNFLAGS) > test-output.txt
	@cmp test-output.txt expected.txt && echo "ok: $(NAME).wasm turns sample.txt into expected.txt"

clean:
	rm -f $(NAME).wasm test-output.txt

.PHONY: test clean
