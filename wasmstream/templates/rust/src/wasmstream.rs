//! wasmstream.rs -- the wasmstream guest SDK for Rust: one module, no crates.
//!
//! Your crate root declares `mod wasmstream;` and
//!
//!     pub fn transform(input: &[u8], out: &mut Vec<u8>) -> Result<(), String>
//!
//! which reads a frame of input and appends its output to `out`; an `Err` fails the frame and
//! its message goes to wasmstream's stderr, error message and dead letter. This module provides what wasmstream calls: the
//! `process_chunk` transform export, the `alloc` allocator export, and an `init` export that
//! keeps the bytes of `--init init --config ...` for `config()`. The ABI behind it is documented
//! in the wasmstream README, section "Guest ABI".

#![allow(dead_code)] // a transform need not use every helper

use std::cell::{Cell, RefCell};

thread_local! {
    // One output buffer per instance, grown to the largest frame's output and reused.
    static OUTPUT: RefCell<Vec<u8>> = RefCell::new(Vec::new());
    static CONFIG: Cell<&'static [u8]> = Cell::new(&[]);
    // Why the last frame failed, for wasmstream's error message and dead letter.
    static REASON: RefCell<Vec<u8>> = RefCell::new(Vec::new());
}

/// The bytes given with `--init init --config TEXT|@FILE` (empty without them).
pub fn config() -> &'static [u8] {
    CONFIG.with(|config| config.get())
}

// ---- The ABI exports; nothing below is for you to call. ----

/// The host allocates the input buffer (once per instance) and the config bytes here. There is
/// deliberately no deallocator export: the output buffer is reused for every frame, and the
/// config bytes must live as long as the instance, so there is nothing the host should free.
#[no_mangle]
pub extern "C" fn alloc(size: i32) -> *mut u8 {
    let mut buffer = Vec::<u8>::with_capacity(size.max(1) as usize);
    let address = buffer.as_mut_ptr();
    std::mem::forget(buffer);
    address
}

#[no_mangle]
pub extern "C" fn init(data: *const u8, len: i32) -> i32 {
    // The host never frees these bytes (no deallocator), so they live as long as the instance.
    let bytes: &'static [u8] = unsafe { std::slice::from_raw_parts(data, len as usize) };
    CONFIG.with(|config| config.set(bytes));
    0
}

/// The packed result: the output's address in the high 32 bits, its length in the low 32;
/// -1 when the transform returned an error.
#[no_mangle]
pub extern "C" fn process_chunk(data: *const u8, len: i32) -> i64 {
    let input = unsafe { std::slice::from_raw_parts(data, len as usize) };
    REASON.with(|reason| reason.borrow_mut().clear());
    OUTPUT.with(|cell| {
        let mut out = cell.borrow_mut();
        out.clear();
        match crate::transform(input, &mut out) {
            Ok(()) => ((out.as_ptr() as usize as i64) << 32) | out.len() as i64,
            Err(message) => {
                eprintln!("transform: {}", message);
                REASON.with(|reason| reason.borrow_mut().extend_from_slice(message.as_bytes()));
                -1
            }
        }
    })
}

/// The `Err` message of the frame that just failed (packed like process_chunk's result).
#[no_mangle]
pub extern "C" fn error_message() -> i64 {
    REASON.with(|reason| {
        let reason = reason.borrow();
        ((reason.as_ptr() as usize as i64) << 32) | reason.len() as i64
    })
}
