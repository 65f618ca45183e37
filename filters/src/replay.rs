//! A recorded upstream answer (a trace) through a pipeline, with no server and no sockets:
//! `replay` and `doctor` show what a client gets from it; tests use it the same way.

use crate::api::{ClientRequest, Output, Responder};
use crate::pipeline::Compiled;
use crate::upstream::SseDecoder;

/// Runs a whole upstream SSE body (cut into `parts`) through a pipeline, as the response body
/// would for `req`'s client; returns the client's bytes.
pub fn run(p: &Compiled, req: &ClientRequest, parts: &[&[u8]]) -> Vec<u8> {
    let mut chain = Responder::new(p.new_chain(req), req);
    let mut dec = SseDecoder::new();
    let mut evs = Vec::new();
    let mut out = Vec::new();
    let mut wire = Vec::new();
    let collect = |out: &mut Vec<Output>, wire: &mut Vec<u8>| {
        for e in out.drain(..) {
            if let Output::Bytes(b) = e {
                wire.extend_from_slice(&b);
            }
        }
    };
    for part in parts {
        dec.push(part, &mut evs);
        chain.push_all(&mut evs, &mut out);
        collect(&mut out, &mut wire);
    }
    dec.finish(&mut evs);
    chain.push_all(&mut evs, &mut out);
    chain.end(&mut out);
    collect(&mut out, &mut wire);
    wire
}
