//! Client libraries, unchanged: the `redis` crate (RESP2 and RESP3) and
//! redis-py from PyPI (RESP2 and RESP3), against a single kvd.

use std::process::Command;
use std::time::Duration;

use redis::{Commands, Value};

use crate::harness::{data_dir, run_bounded_for, stderr, stdout, Kvd};

fn url(kvd: &Kvd, query: &str) -> String {
    format!("redis://{}/{query}", kvd.resp_addr)
}

fn exercise(con: &mut redis::Connection, prefix: &str) {
    let k = |s: &str| format!("{prefix}{s}");
    let _: () = con.set(k("a"), "1").unwrap();
    let _: () = con.set(k("b"), b"two\r\n\0".as_slice()).unwrap();
    assert_eq!(con.get::<_, Option<String>>(k("a")).unwrap().as_deref(), Some("1"));
    assert_eq!(con.get::<_, Option<Vec<u8>>>(k("b")).unwrap().as_deref(), Some(&b"two\r\n\0"[..]));
    assert_eq!(con.get::<_, Option<String>>(k("missing")).unwrap(), None);
    let values: Vec<Option<String>> = con.mget(&[k("a"), k("missing"), k("b")]).unwrap();
    assert_eq!(values, vec![Some("1".into()), None, Some("two\r\n\0".into())]);
    let _: () = con.mset(&[(k("c"), "3"), (k("d"), "4")]).unwrap();
    assert_eq!(con.exists::<_, i64>(&[k("c"), k("d"), k("missing")]).unwrap(), 2);
    assert_eq!(con.del::<_, i64>(&[k("c"), k("missing")]).unwrap(), 1);
    let mut pipe = redis::pipe();
    for i in 0..200 {
        pipe.set(k(&format!("p{i}")), i).ignore();
    }
    for i in 0..200 {
        pipe.get(k(&format!("p{i}")));
    }
    let got: Vec<i64> = pipe.query(con).unwrap();
    assert_eq!(got, (0..200).collect::<Vec<i64>>());
    let err = redis::cmd("NOSUCH").query::<Value>(con).unwrap_err();
    assert!(err.to_string().contains("unknown command"), "{err}");
    // The connection is still usable after an error.
    assert_eq!(con.get::<_, Option<String>>(k("a")).unwrap().as_deref(), Some("1"));
}

#[test]
fn the_redis_crate_speaks_resp2_and_resp3() {
    let dir = data_dir();
    let kvd = Kvd::start(dir.path(), &["--cores", "0,1"]);
    let mut resp2 = redis::Client::open(url(&kvd, "")).unwrap().get_connection().expect("RESP2 connection");
    exercise(&mut resp2, "r2:");
    let mut resp3 = redis::Client::open(url(&kvd, "?protocol=resp3")).unwrap().get_connection().expect("RESP3");
    exercise(&mut resp3, "r3:");
    // RESP3 types on the wire: HELLO is a map, a missing key a null.
    let hello: Value = redis::cmd("HELLO").arg(3).query(&mut resp3).unwrap();
    let Value::Map(fields) = hello else { panic!("HELLO 3 is a map: {hello:?}") };
    assert!(fields.contains(&(Value::BulkString(b"proto".to_vec()), Value::Int(3))), "{fields:?}");
    assert_eq!(redis::cmd("GET").arg("r3:missing").query::<Value>(&mut resp3).unwrap(), Value::Nil);
    let info: Value = redis::cmd("INFO").arg("server").query(&mut resp3).unwrap();
    assert!(matches!(&info, Value::VerbatimString { text, .. } if text.contains("redis_version:7.2.0")), "{info:?}");
    let name: Option<String> = redis::cmd("CLIENT").arg("GETNAME").query(&mut resp2).unwrap();
    assert_eq!(name, None);
    assert!(kvd.stop().success());
}

const PY_SCRIPT: &str = r#"
import sys, redis
host, port = sys.argv[1], int(sys.argv[2])
for proto in (2, 3):
    r = redis.Redis(host=host, port=port, protocol=proto, socket_timeout=20)
    assert r.ping() is True
    k = f"py{proto}:"
    assert r.set(k + "a", "1") is True
    assert r.get(k + "a") == b"1", r.get(k + "a")
    assert r.get(k + "missing") is None
    assert r.mget([k + "a", k + "missing"]) == [b"1", None]
    assert r.set(k + "a", "2", nx=True) is None
    p = r.pipeline(transaction=False)
    for i in range(100):
        p.set(f"{k}p{i}", i)
    for i in range(100):
        p.get(f"{k}p{i}")
    out = p.execute()
    assert out[:100] == [True] * 100, out[:100]
    assert out[100:] == [str(i).encode() for i in range(100)], out[100:]
    info = r.info()
    assert info["redis_version"] == "7.2.0", info
    assert info["role"] == "master", info
    assert info["db0"]["keys"] >= 101, info["db0"]
    assert r.dbsize() == info["db0"]["keys"]
    slots = r.execute_command("CLUSTER SLOTS")
    assert slots, slots
    hello = r.execute_command("HELLO", proto)
    fields = hello if isinstance(hello, dict) else dict(zip(hello[::2], hello[1::2]))
    assert fields[b"proto"] == proto, hello
    r.close()
print("redis-py ok", redis.__version__)
"#;

/// redis-py from PyPI, in a fresh virtualenv: a test that cannot install it
/// fails with pip's output rather than pass without it.
#[test]
fn redis_py_speaks_resp2_and_resp3() {
    let dir = data_dir();
    let kvd = Kvd::start(&dir.path().join("data"), &["--cores", "0"]);
    let venv = dir.path().join("venv");
    let mut make = Command::new("python3");
    make.args(["-m", "venv"]).arg(&venv);
    let out = run_bounded_for(make, b"", Duration::from_secs(120));
    assert!(out.status.success(), "python3 -m venv failed:\n{}{}", stdout(&out), stderr(&out));
    let mut pip = Command::new(venv.join("bin/pip"));
    pip.args(["install", "--disable-pip-version-check", "--quiet", "redis"]);
    let out = run_bounded_for(pip, b"", Duration::from_secs(300));
    assert!(out.status.success(), "pip install redis failed:\n{}{}", stdout(&out), stderr(&out));
    let script = dir.path().join("check.py");
    std::fs::write(&script, PY_SCRIPT).unwrap();
    let mut py = Command::new(venv.join("bin/python"));
    py.arg(&script).arg(kvd.resp_addr.ip().to_string()).arg(kvd.resp_addr.port().to_string());
    let out = run_bounded_for(py, b"", Duration::from_secs(120));
    assert!(out.status.success(), "redis-py script failed:\n{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("redis-py ok"), "{}", stdout(&out));
    assert!(kvd.stop().success());
}
