//! Bad input against a real kvd: garbage handshakes, unknown opcodes,
//! malformed bodies, oversized keys, values and frames, truncated frames and
//! clients that vanish mid-frame. Each gets a clear error or a closed
//! connection; other clients keep being served and stored data is unchanged.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::Bytes;
use kv_engine::Condition;
use kv_net::client::Client;
use kv_net::native::codec::{self, Hello, Request, Response, Status, Welcome};
use rand::{Rng, SeedableRng};

use crate::harness::{data_dir, seed, Kvd};

const KEY_MAX: usize = 1024;
const VALUE_MAX: usize = 4096;

fn raw(kvd: &Kvd) -> TcpStream {
    let s = TcpStream::connect(kvd.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// A raw connection past the handshake.
fn raw_session(kvd: &Kvd) -> TcpStream {
    let mut s = raw(kvd);
    s.write_all(&Hello { version_min: 1, version_max: 1 }.encode()).unwrap();
    let mut w = [0u8; codec::WELCOME_BYTES];
    s.read_exact(&mut w).unwrap();
    assert_eq!(Welcome::decode(&w).unwrap().status, 0);
    s
}

/// Reads one answer frame.
fn answer(s: &mut TcpStream) -> (u64, Response) {
    let mut h = [0u8; codec::FRAME_HEADER_BYTES];
    s.read_exact(&mut h).expect("an answer");
    let header = codec::parse_header(&h, usize::MAX).unwrap().unwrap();
    let mut body = vec![0u8; header.frame_bytes - codec::FRAME_HEADER_BYTES];
    s.read_exact(&mut body).unwrap();
    (header.id, codec::decode_response(header.code, header.opcode_echo, Bytes::from(body)).unwrap())
}

fn expect_error(s: &mut TcpStream, id: u64, status: Status) {
    match answer(s) {
        (got, Response::Error { status: st, message }) if got == id && st == status => {
            assert!(!message.is_empty(), "{status:?} without a message")
        }
        other => panic!("expected {status:?} for request {id}, got {other:?}"),
    }
}

fn expect_closed(s: &mut TcpStream) {
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("connection still open: {other:?}"),
    }
}

fn frame(id: u64, opcode: u8, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&((codec::FRAME_HEADER_BYTES - 4 + body.len()) as u32).to_le_bytes());
    f.extend_from_slice(&[opcode, 0, 0, 0]);
    f.extend_from_slice(&id.to_le_bytes());
    f.extend_from_slice(body);
    f
}

fn ping_works(s: &mut TcpStream, id: u64) {
    let mut f = Vec::new();
    codec::encode_request(id, &Request::Ping, &mut f);
    s.write_all(&f).unwrap();
    assert_eq!(answer(s), (id, Response::Pong));
}

#[test]
fn bad_input_gets_errors_and_loses_nothing() {
    let dir = data_dir();
    let limits = ["--max-key-bytes", "1024", "--max-value-bytes", "4096"];
    let kvd = Kvd::start(dir.path(), &limits);
    let mut good = Client::connect(&[kvd.endpoint()], Duration::from_secs(10)).unwrap();
    let sentinel_version = good.put(b"sentinel", b"unchanged", Condition::Always).unwrap();
    let check_data = |c: &mut Client| {
        assert_eq!(c.get(b"sentinel").unwrap(), Some((b"unchanged".to_vec(), sentinel_version)));
    };

    // Not our protocol at all: the connection is closed.
    let mut s = raw(&kvd);
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    expect_closed(&mut s);
    // An unsupported version gets a welcome saying so, then a close.
    let mut s = raw(&kvd);
    s.write_all(&Hello { version_min: 7, version_max: 9 }.encode()).unwrap();
    let mut w = [0u8; codec::WELCOME_BYTES];
    s.read_exact(&mut w).unwrap();
    assert_eq!(Welcome::decode(&w).unwrap().status, codec::WelcomeStatus::UnsupportedVersion as u16);
    expect_closed(&mut s);

    // Errors that keep the connection.
    let mut s = raw_session(&kvd);
    s.write_all(&frame(1, 99, b"")).unwrap();
    expect_error(&mut s, 1, Status::UnknownOpcode);
    s.write_all(&frame(2, codec::Opcode::Get as u8, &[200, 0, 0, 0, b'k'])).unwrap();
    expect_error(&mut s, 2, Status::BadRequest);
    let mut f = Vec::new();
    let long_key = Bytes::from(vec![b'k'; KEY_MAX + 1]);
    codec::encode_request(
        3,
        &Request::Put { key: long_key, value: Bytes::new(), condition: Condition::Always },
        &mut f,
    );
    s.write_all(&f).unwrap();
    expect_error(&mut s, 3, Status::KeyTooLarge);
    f.clear();
    let big = Bytes::from(vec![b'v'; VALUE_MAX + 1]);
    codec::encode_request(
        4,
        &Request::Put { key: Bytes::from_static(b"sentinel"), value: big, condition: Condition::Always },
        &mut f,
    );
    s.write_all(&f).unwrap();
    expect_error(&mut s, 4, Status::ValueTooLarge);
    ping_works(&mut s, 5);
    check_data(&mut good);

    // A frame longer than the limit: answered, then closed.
    let mut s = raw_session(&kvd);
    s.write_all(&[0xFF, 0xFF, 0xFF, 0x7F, 3, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0]).unwrap();
    expect_error(&mut s, 6, Status::FrameTooLarge);
    expect_closed(&mut s);
    // A length shorter than a header: answered, then closed.
    let mut s = raw_session(&kvd);
    s.write_all(&[2, 0, 0, 0, 1, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0]).unwrap();
    expect_error(&mut s, 7, Status::BadRequest);
    expect_closed(&mut s);

    // Clients that vanish mid-handshake and mid-frame.
    let mut s = raw(&kvd);
    s.write_all(&codec::MAGIC).unwrap();
    drop(s);
    let mut s = raw_session(&kvd);
    let mut f = Vec::new();
    codec::encode_request(
        8,
        &Request::Put {
            key: Bytes::from_static(b"sentinel"),
            value: Bytes::from_static(b"torn"),
            condition: Condition::Always,
        },
        &mut f,
    );
    s.write_all(&f[..f.len() - 2]).unwrap();
    drop(s);
    check_data(&mut good);

    // Random garbage after a good handshake, seeded.
    let seed = seed("bad_input_gets_errors_and_loses_nothing");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for _ in 0..30 {
        let mut s = raw_session(&kvd);
        let junk: Vec<u8> = (0..rng.gen_range(1..4096)).map(|_| rng.gen()).collect();
        let _ = s.write_all(&junk);
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut sink = [0u8; 4096];
        while let Ok(n) = s.read(&mut sink) {
            if n == 0 {
                break;
            }
        }
    }
    check_data(&mut good);
    ping_works(&mut raw_session(&kvd), 9);
    assert!(kvd.stop().success(), "kvd survived everything and stops cleanly");
}
