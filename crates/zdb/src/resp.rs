//! The Redis serialization protocol (RESP2), as far as a 0-db server needs it.
//!
//! Requests are arrays of bulk strings (what every client library sends), or inline commands
//! (words on one line, what `telnet` users type). Replies are the five RESP2 types.
//!
//! This is written here instead of taken from a crate such as `redis-protocol`: the server
//! parses one shape of frame only, and the part that matters is refusing hostile input early
//! (a declared bulk or array larger than the limits is an error before any byte of it is
//! buffered, and nothing is allocated from a declared length). A general parser would need
//! the same checks wrapped around it, for more code than the parser itself.

use bytes::{Buf, Bytes, BytesMut};

/// How large a request may be. Anything declared larger is refused before it is read.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The most bytes in one argument (a key or a value).
    pub bulk: usize,
    /// The most arguments in one request, the command name included.
    pub args: usize,
    /// The most bytes of all arguments of one request together.
    pub request: usize,
    /// The longest inline command line.
    pub line: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            bulk: 8 * 1024 * 1024,
            // MGET takes up to 1023 keys, plus its name.
            args: 1024,
            // One largest value plus room for keys (MGET's 1023 keys of 255 bytes).
            request: 9 * 1024 * 1024,
            line: 64 * 1024,
        }
    }
}

/// Input that is not a request the server accepts. The connection is closed after it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("expected '*' or an inline command, got byte {0:#04x}")]
    UnexpectedByte(u8),
    #[error("expected '$' before an argument, got byte {0:#04x}")]
    ExpectedBulk(u8),
    #[error("invalid length in a '{0}' header")]
    BadLength(char),
    #[error("array of {0} arguments is over the limit of {1}")]
    TooManyArgs(usize, usize),
    #[error("argument of {0} bytes is over the limit of {1}")]
    BulkTooLarge(usize, usize),
    #[error("request of more than {0} bytes")]
    RequestTooLarge(usize),
    #[error("line longer than {0} bytes")]
    LineTooLong(usize),
    #[error("argument not followed by CRLF")]
    MissingCrlf,
    #[error("unbalanced quotes in inline command")]
    UnbalancedQuotes,
}

/// Takes the next complete request off the front of `buf`.
///
/// Returns `Ok(None)` when `buf` holds only part of a request (read more and call again;
/// nothing is consumed), `Ok(Some(args))` for a request (an empty request, such as a blank
/// line or `*0`, gives an empty vector), and an error for input that can never become a valid
/// request. The cost of a call is proportional to the number of arguments, not to their size,
/// so feeding a large value a few bytes at a time stays cheap.
pub fn parse(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first == b'*' {
        parse_array(buf, limits)
    } else if first.is_ascii_graphic() || first == b' ' || first == b'\r' || first == b'\n' {
        parse_inline(buf, limits)
    } else {
        Err(ProtocolError::UnexpectedByte(first))
    }
}

/// Finds the CRLF-terminated line starting at `from`; returns the index of its '\r'.
fn line_end(buf: &[u8], from: usize, limit: usize) -> Result<Option<usize>, ProtocolError> {
    let window = &buf[from..buf.len().min(from + limit + 2)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(i) => Ok(Some(from + i)),
        None if window.len() >= limit + 2 => Err(ProtocolError::LineTooLong(limit)),
        None => Ok(None),
    }
}

fn parse_len(digits: &[u8], kind: char) -> Result<i64, ProtocolError> {
    // An optional '-' and 1 to 18 digits: no '+', no spaces, nothing that could overflow.
    let (neg, body) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    if body.is_empty() || body.len() > 18 || !body.iter().all(u8::is_ascii_digit) {
        return Err(ProtocolError::BadLength(kind));
    }
    let n = body.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0'));
    Ok(if neg { -n } else { n })
}

fn parse_array(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    // Header limits are small: "*1024\r\n".
    let Some(end) = line_end(buf, 1, 20)? else {
        return Ok(None);
    };
    let count = parse_len(&buf[1..end], '*')?;
    if count < 0 {
        // A null array: nothing to run.
        buf.advance(end + 2);
        return Ok(Some(Vec::new()));
    }
    let count = count as usize;
    if count > limits.args {
        return Err(ProtocolError::TooManyArgs(count, limits.args));
    }
    // First pass: check that the whole request is here, without copying.
    let mut pos = end + 2;
    let mut spans = Vec::with_capacity(count.min(64));
    let mut total = 0usize;
    for _ in 0..count {
        let Some(&b) = buf.get(pos) else {
            return Ok(None);
        };
        if b != b'$' {
            return Err(ProtocolError::ExpectedBulk(b));
        }
        let Some(end) = line_end(buf, pos + 1, 20)? else {
            return Ok(None);
        };
        let len = parse_len(&buf[pos + 1..end], '$')?;
        if len < 0 {
            return Err(ProtocolError::BadLength('$'));
        }
        let len = len as usize;
        if len > limits.bulk {
            return Err(ProtocolError::BulkTooLarge(len, limits.bulk));
        }
        total += len;
        if total > limits.request {
            return Err(ProtocolError::RequestTooLarge(limits.request));
        }
        let start = end + 2;
        if buf.len() < start + len + 2 {
            return Ok(None);
        }
        if &buf[start + len..start + len + 2] != b"\r\n" {
            return Err(ProtocolError::MissingCrlf);
        }
        spans.push((start, len));
        pos = start + len + 2;
    }
    // Second pass: split the request off and slice the arguments out of it (no copies).
    let frame = buf.split_to(pos).freeze();
    Ok(Some(
        spans
            .into_iter()
            .map(|(start, len)| frame.slice(start..start + len))
            .collect(),
    ))
}

fn parse_inline(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    let Some(nl) = buf.iter().take(limits.line + 1).position(|&b| b == b'\n') else {
        if buf.len() > limits.line {
            return Err(ProtocolError::LineTooLong(limits.line));
        }
        return Ok(None);
    };
    let line = buf.split_to(nl + 1);
    let line = line.strip_suffix(b"\n").unwrap_or(&line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut args = Vec::new();
    let mut i = 0;
    while i < line.len() {
        match line[i] {
            b' ' | b'\t' => i += 1,
            q @ (b'"' | b'\'') => {
                let close = line[i + 1..]
                    .iter()
                    .position(|&b| b == q)
                    .ok_or(ProtocolError::UnbalancedQuotes)?;
                args.push(Bytes::copy_from_slice(&line[i + 1..i + 1 + close]));
                i += close + 2;
            }
            _ => {
                let len = line[i..]
                    .iter()
                    .position(|&b| b == b' ' || b == b'\t')
                    .unwrap_or(line.len() - i);
                args.push(Bytes::copy_from_slice(&line[i..i + len]));
                i += len;
            }
        }
        if args.len() > limits.args {
            return Err(ProtocolError::TooManyArgs(args.len(), limits.args));
        }
    }
    Ok(Some(args))
}

/// A reply to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`: a one-line status (no CR or LF inside).
    Status(&'static str),
    /// A one-line status built at run time (the challenge of `AUTH SECURE CHALLENGE`).
    StatusOwned(String),
    /// `-message`: an error; 0-db's errors have no code word, only the message.
    Error(String),
    /// `:n`
    Int(i64),
    /// `$len` and the bytes.
    Bulk(Bytes),
    /// `$-1`: no value.
    Nil,
    /// `*n` and the elements.
    Array(Vec<Reply>),
}

impl Reply {
    pub fn error(msg: impl Into<String>) -> Self {
        Self::Error(msg.into())
    }

    pub fn bulk(b: impl Into<Bytes>) -> Self {
        Self::Bulk(b.into())
    }

    /// Appends the wire form of the reply to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Reply::Status(s) => line(out, b'+', s.as_bytes()),
            Reply::StatusOwned(s) => line(out, b'+', s.as_bytes()),
            Reply::Error(s) => {
                // A message must stay on one line whatever it quotes.
                let clean: Vec<u8> = s
                    .bytes()
                    .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b })
                    .collect();
                line(out, b'-', &clean)
            }
            Reply::Int(n) => line(out, b':', n.to_string().as_bytes()),
            Reply::Bulk(b) => {
                line(out, b'$', b.len().to_string().as_bytes());
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
            }
            Reply::Nil => out.extend_from_slice(b"$-1\r\n"),
            Reply::Array(items) => {
                line(out, b'*', items.len().to_string().as_bytes());
                for i in items {
                    i.encode(out);
                }
            }
        }
    }
}

fn line(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.reserve(body.len() + 3);
    out.extend_from_slice(&[tag]);
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            bulk: 1024,
            args: 8,
            request: 1500,
            line: 64,
        }
    }

    fn all(input: &[u8]) -> Result<Vec<Vec<Bytes>>, ProtocolError> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(r) = parse(&mut buf, &limits())? {
            out.push(r);
        }
        assert!(buf.is_empty(), "left over: {buf:?}");
        Ok(out)
    }

    fn args(v: &[&str]) -> Vec<Bytes> {
        v.iter()
            .map(|s| Bytes::copy_from_slice(s.as_bytes()))
            .collect()
    }

    #[test]
    fn arrays_and_pipelines() {
        let got = all(b"*1\r\n$4\r\nPING\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n").unwrap();
        assert_eq!(got, vec![args(&["PING"]), args(&["SET", "k", ""])]);
    }

    #[test]
    fn binary_values_keep_their_bytes() {
        let got = all(b"*2\r\n$3\r\nGET\r\n$4\r\n\x00\r\n\xff\r\n").unwrap();
        assert_eq!(got[0][1].as_ref(), b"\x00\r\n\xff");
    }

    #[test]
    fn inline_commands_with_quotes() {
        let got = all(b"PING\r\nSET  k \"a b\"\nget 'x'\r\n").unwrap();
        assert_eq!(
            got,
            vec![
                args(&["PING"]),
                args(&["SET", "k", "a b"]),
                args(&["get", "x"])
            ]
        );
        assert_eq!(all(b"\r\n").unwrap(), vec![Vec::<Bytes>::new()]);
        assert_eq!(all(b"SET \"k\r\n"), Err(ProtocolError::UnbalancedQuotes));
    }

    /// Every prefix of a valid stream is "need more", and feeding it a byte at a time gives
    /// exactly the requests of feeding it whole.
    #[test]
    fn byte_at_a_time() {
        let stream: &[u8] =
            b"*3\r\n$3\r\nSET\r\n$5\r\nhello\r\n$11\r\nworld\r\n\r\n!!\r\n*1\r\n$4\r\nPING\r\nINFO\r\n";
        let whole = all(stream).unwrap();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &b in stream {
            buf.extend_from_slice(&[b]);
            while let Some(r) = parse(&mut buf, &limits()).unwrap() {
                got.push(r);
            }
        }
        assert!(buf.is_empty());
        assert_eq!(got, whole);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0][2].as_ref(), b"world\r\n\r\n!!");
    }

    #[test]
    fn partial_input_consumes_nothing() {
        for cut in [1, 3, 5, 9, 14, 20] {
            let full = b"*2\r\n$3\r\nGET\r\n$5\r\nhello\r\n";
            let mut buf = BytesMut::from(&full[..cut]);
            assert_eq!(parse(&mut buf, &limits()), Ok(None), "cut {cut}");
            assert_eq!(buf.len(), cut);
        }
    }

    #[test]
    fn limits_refuse_before_the_data_arrives() {
        // Declared sizes are refused from the header alone.
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$1025\r\n"[..]);
        assert_eq!(
            parse(&mut buf, &limits()),
            Err(ProtocolError::BulkTooLarge(1025, 1024))
        );
        // Arguments each under the limit, together over it.
        let mut buf = BytesMut::from(&b"*3\r\n$3\r\nSET\r\n$1000\r\n"[..]);
        buf.extend_from_slice(&[b'x'; 1000]);
        buf.extend_from_slice(b"\r\n$1000\r\n");
        assert_eq!(
            parse(&mut buf, &limits()),
            Err(ProtocolError::RequestTooLarge(1500))
        );
        let mut buf = BytesMut::from(&b"*9\r\n"[..]);
        assert_eq!(
            parse(&mut buf, &limits()),
            Err(ProtocolError::TooManyArgs(9, 8))
        );
        let mut buf = BytesMut::from(&b"*1\r\n$9999999999999999999\r\n"[..]);
        assert_eq!(
            parse(&mut buf, &limits()),
            Err(ProtocolError::BadLength('$'))
        );
        // An endless header or inline line is refused once it passes the line limit.
        let mut buf = BytesMut::from(&[b'*'; 40][..]);
        assert!(matches!(
            parse(&mut buf, &limits()),
            Err(ProtocolError::LineTooLong(_))
        ));
        let mut buf = BytesMut::from(&[b'a'; 100][..]);
        assert_eq!(
            parse(&mut buf, &limits()),
            Err(ProtocolError::LineTooLong(64))
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let cases: &[&[u8]] = &[
            b"\x00\x01\x02",
            b"*x\r\n",
            b"*-5x\r\n",
            b"*1\r\n:1\r\n",
            b"*1\r\n$-1\r\n",
            b"*1\r\n$3\r\nabcXY",
            b"*1\r\n$\r\n",
            b"*1\r\n$+3\r\nabc\r\n\xff",
        ];
        for c in cases {
            let mut buf = BytesMut::from(*c);
            assert!(parse(&mut buf, &limits()).is_err(), "{c:?}");
        }
        // Pseudo-random input: any outcome but a panic or an unbounded buffer.
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for _ in 0..2000 {
            let mut buf = BytesMut::new();
            for _ in 0..64 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let pick = b"*$\r\n0123456789-abc \"'"[(x % 21) as usize];
                buf.extend_from_slice(&[pick]);
            }
            while let Ok(Some(_)) = parse(&mut buf, &limits()) {}
        }
    }

    #[test]
    fn replies_encode() {
        let mut out = BytesMut::new();
        Reply::Array(vec![
            Reply::Status("OK"),
            Reply::error("bad\r\nthing"),
            Reply::Int(-3),
            Reply::bulk(&b"a\r\nb"[..]),
            Reply::Nil,
            Reply::Array(vec![]),
        ])
        .encode(&mut out);
        assert_eq!(
            &out[..],
            b"*6\r\n+OK\r\n-bad  thing\r\n:-3\r\n$4\r\na\r\nb\r\n$-1\r\n*0\r\n"
        );
    }
}
