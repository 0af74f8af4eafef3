//! A wasmstream transform: upper-cases ASCII letters, leaves every other byte alone.
//! Change `transform` below; `make` builds @NAME@.wasm, `make test` checks it on sample.txt.
mod wasmstream;

pub fn transform(input: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    out.extend(input.iter().map(u8::to_ascii_uppercase));
    Ok(())
}
