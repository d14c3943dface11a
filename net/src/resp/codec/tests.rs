//! Parser tests: well-formed commands split at every byte, each protocol
//! error Redis reports, and seeded random bytes (the parser never panics,
//! never returns an argument larger than its caps).

use bytes::{Bytes, BytesMut};
use rand::{Rng, RngCore, SeedableRng};

use super::*;

const CAPS: Caps = Caps { args_max: 64, bulk_bytes_max: 1024, command_bytes_max: 4096, unauthenticated: false };

fn parse_all(input: &[u8], caps: Caps) -> Result<Vec<Vec<Bytes>>, ProtocolError> {
    let mut p = Parser::default();
    let mut buf = BytesMut::from(input);
    let mut out = Vec::new();
    while let Some(cmd) = p.next(&mut buf, caps)? {
        out.push(cmd);
    }
    Ok(out)
}

fn words(cmd: &[Bytes]) -> Vec<&str> {
    cmd.iter().map(|b| std::str::from_utf8(b).unwrap()).collect()
}

fn encode(cmd: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", cmd.len()).into_bytes();
    for a in cmd {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[test]
fn multibulk_and_inline_commands() {
    let mut input = encode(&[b"SET", b"k", b"a\r\nb"]);
    input.extend_from_slice(b"PING\r\n\r\n  get  \"x y\" 'it''s'\n*0\r\n*-1\r\n");
    input.extend_from_slice(&encode(&[b"GET", b""]));
    let cmds = parse_all(&input, CAPS);
    // `'it''s'` is an unbalanced-quote error in Redis too (a quote must be
    // followed by a space); check the valid part first.
    assert!(cmds.is_err());
    let mut input = encode(&[b"SET", b"k", b"a\r\nb"]);
    input.extend_from_slice(b"PING\r\n\r\n  get  \"x\\ty\\x41\" 'it\\'s'\n*0\r\n*-1\r\n");
    input.extend_from_slice(&encode(&[b"GET", b""]));
    let cmds = parse_all(&input, CAPS).unwrap();
    let cmds: Vec<Vec<&str>> = cmds.iter().map(|c| words(c)).collect();
    assert_eq!(cmds, vec![vec!["SET", "k", "a\r\nb"], vec!["PING"], vec!["get", "x\tyA", "it's"], vec!["GET", ""]]);
}

#[test]
fn every_split_point_gives_the_same_commands() {
    let mut input = encode(&[b"MSET", b"a", b"1", b"bb", b"22"]);
    input.extend_from_slice(b"ECHO hi\r\n");
    input.extend_from_slice(&encode(&[b"GET", b"bb"]));
    let whole = parse_all(&input, CAPS).unwrap();
    assert_eq!(whole.len(), 3);
    for cut in 0..input.len() {
        let mut p = Parser::default();
        let mut buf = BytesMut::from(&input[..cut]);
        let mut got = Vec::new();
        while let Some(cmd) = p.next(&mut buf, CAPS).unwrap() {
            got.push(cmd);
        }
        buf.extend_from_slice(&input[cut..]);
        while let Some(cmd) = p.next(&mut buf, CAPS).unwrap() {
            got.push(cmd);
        }
        assert_eq!(got, whole, "split at {cut}");
        assert!(buf.is_empty());
    }
}

#[test]
fn wanted_counts_the_missing_bulk_bytes() {
    let mut p = Parser::default();
    let mut buf = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$10\r\nabc"[..]);
    assert_eq!(p.next(&mut buf, CAPS).unwrap(), None);
    assert_eq!(p.wanted(buf.len()), 9);
}

#[test]
fn protocol_errors_match_redis() {
    let big_inline = vec![b'a'; INLINE_BYTES_MAX + 10];
    let mut big_count = b"*".to_vec();
    big_count.extend(std::iter::repeat_n(b'1', INLINE_BYTES_MAX + 10));
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"*x\r\n".to_vec(), "invalid multibulk length"),
        (b"*65\r\n".to_vec(), "invalid multibulk length"),
        (b"*1\r\n:3\r\n".to_vec(), "expected '$', got ':'"),
        (b"*1\r\n$-1\r\n".to_vec(), "invalid bulk length"),
        (b"*1\r\n$1025\r\n".to_vec(), "invalid bulk length"),
        (b"*1\r\n$1abc\r\n".to_vec(), "invalid bulk length"),
        (b"*1\r\n$3\r\nGETxx".to_vec(), "expected CRLF after bulk string"),
        (b"*5\r\n$1000\r\n".to_vec(), ""),
        (big_inline, "too big inline request"),
        (big_count, "too big mbulk count string"),
        (b"GET \"abc\n".to_vec(), "unbalanced quotes in request"),
    ];
    for (input, want) in cases {
        match parse_all(&input, CAPS) {
            Err(ProtocolError(got)) => {
                assert_eq!(got, want, "{:?}", String::from_utf8_lossy(&input[..20.min(input.len())]))
            }
            Ok(cmds) => assert!(want.is_empty() && cmds.is_empty(), "{want}: parsed {cmds:?}"),
        }
    }
    // Five bulks of 1000 bytes: over the command's 4096 bytes.
    let mut input = b"*5\r\n".to_vec();
    for _ in 0..5 {
        input.extend_from_slice(b"$1000\r\n");
        input.extend(std::iter::repeat_n(b'v', 1000));
        input.extend_from_slice(b"\r\n");
    }
    assert_eq!(parse_all(&input, CAPS).unwrap_err().0, "command larger than 4096 bytes");
}

#[test]
fn unauthenticated_caps_are_redis_s() {
    let caps = Caps { args_max: ARGS_MAX, bulk_bytes_max: 1 << 20, command_bytes_max: 1 << 30, unauthenticated: false }
        .unauthenticated();
    assert_eq!(parse_all(b"*11\r\n", caps).unwrap_err().0, "unauthenticated multibulk length");
    assert_eq!(parse_all(b"*1\r\n$16385\r\n", caps).unwrap_err().0, "unauthenticated bulk length");
    assert!(parse_all(b"*10\r\n", caps).unwrap().is_empty());
    assert!(parse_all(b"*1\r\n$16384\r\n", caps).unwrap().is_empty());
}

/// Random bytes, random valid-looking fragments and mutated valid commands:
/// the parser must never panic and never hand out more than its caps allow.
#[test]
fn fuzz_never_panics() {
    let seed: u64 = std::env::var("KVD_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    println!("resp parser fuzz: seed {seed} (rerun with KVD_TEST_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let fragments: &[&[u8]] =
        &[b"*", b"$", b"\r\n", b"\n", b"-1", b"0", b"3", b"999999999999", b"\"", b"'", b"\\x", b" "];
    for round in 0..3000 {
        let mut input = Vec::new();
        match round % 3 {
            0 => {
                input.resize(rng.gen_range(0..512), 0);
                rng.fill_bytes(&mut input);
            }
            1 => {
                for _ in 0..rng.gen_range(0..40) {
                    input.extend_from_slice(fragments[rng.gen_range(0..fragments.len())]);
                }
            }
            _ => {
                input = encode(&[b"SET", b"key", b"value"]);
                for _ in 0..rng.gen_range(1..4) {
                    let i = rng.gen_range(0..input.len());
                    input[i] = rng.gen();
                }
            }
        }
        let caps = if rng.gen() { CAPS } else { CAPS.unauthenticated() };
        let mut p = Parser::default();
        let mut buf = BytesMut::new();
        for chunk in input.chunks(rng.gen_range(1..64)) {
            buf.extend_from_slice(chunk);
            loop {
                match p.next(&mut buf, caps) {
                    Ok(Some(cmd)) => {
                        assert!(!cmd.is_empty() && cmd.len() <= caps.args_max);
                        assert!(cmd.iter().all(|a| a.len() <= caps.bulk_bytes_max.max(INLINE_BYTES_MAX)));
                    }
                    Ok(None) => break,
                    Err(_) => break,
                }
            }
        }
    }
}

#[test]
fn split_args_like_sdssplitargs() {
    let ok: &[(&[u8], &[&str])] = &[
        (b"", &[]),
        (b"  a  b ", &["a", "b"]),
        (b"\"\"", &[""]),
        (b"\"a\\\"b\" c", &["a\"b", "c"]),
        (b"\"\\x4a\\xzz\"", &["Jxzz"]),
    ];
    for (line, want) in ok {
        let got = split_args(line).unwrap();
        assert_eq!(words(&got), *want, "{:?}", String::from_utf8_lossy(line));
    }
    for bad in [&b"\"abc"[..], b"'abc", b"\"a\"b", b"'a'b"] {
        assert!(split_args(bad).is_none(), "{:?}", String::from_utf8_lossy(bad));
    }
}
