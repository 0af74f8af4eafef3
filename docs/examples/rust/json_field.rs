//! json_field: print one top-level field of every JSON-lines record, like `jq -r .FIELD` for a
//! string or a number; records without the field print nothing.
//!   wasmstream run json_field.wasm --framing lines --init init --config user < events.jsonl
//! A sketch rather than a JSON parser: it takes the first "FIELD": in the line, and prints a
//! string's escapes as written.
mod wasmstream;

pub fn transform(input: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    let field = wasmstream::config();
    if field.is_empty() {
        return Err("no field: run with --init init --config FIELD".into());
    }
    let key = [&b"\""[..], field, &b"\""[..]].concat();
    for line in input.split(|&byte| byte == b'\n') {
        if let Some(value) = value_of(line, &key) {
            out.extend_from_slice(value);
            out.push(b'\n');
        }
    }
    Ok(())
}

/// The value after `"field":` in `line`: a string's contents, or a number or literal.
fn value_of<'a>(line: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let mut from = 0;
    while let Some(at) = find(&line[from..], key) {
        let after_key = skip_blanks(&line[from + at + key.len()..]);
        if let Some(value) = after_key.strip_prefix(b":") {
            return Some(scalar(skip_blanks(value)));
        }
        from += at + 1;
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

fn skip_blanks(text: &[u8]) -> &[u8] {
    let blanks = text.iter().take_while(|&&byte| byte == b' ' || byte == b'\t').count();
    &text[blanks..]
}

fn scalar(text: &[u8]) -> &[u8] {
    if let Some(string) = text.strip_prefix(b"\"") {
        let mut end = 0;
        while end < string.len() && string[end] != b'"' {
            end += if string[end] == b'\\' { 2 } else { 1 };
        }
        &string[..end.min(string.len())]
    } else {
        let end = text.iter().position(|byte| b",} \t\r".contains(byte));
        &text[..end.unwrap_or(text.len())]
    }
}
