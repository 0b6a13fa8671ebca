// Shared by the fuzz targets: turns fuzzer bytes into a frame list.
//
// Input layout: repeated [len: u8][len bytes]; a length past the end takes what is left. Small
// frames keep the fuzzer in the interesting region (headers, command bytes, empty frames).

use bytes::Bytes;

pub fn frames(data: &[u8]) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len).min(tail.len());
        out.push(Bytes::copy_from_slice(&tail[..len]));
        rest = &tail[len..];
    }
    out
}
