//! Connection commands: PING, ECHO, QUIT, SELECT, AUTH, HELLO, RESET and
//! CLIENT's subcommands. They touch no stored data and answer at once.

use std::rc::Rc;

use bytes::Bytes;

use super::{int_arg, lower, now, syntax_error, Args, Exec};
use crate::resp::frame::{Frame, Proto, OK};
use crate::resp::session::{self, Conn};
use crate::service::RespMode;

/// The Redis version kvd answers as: what clients check features against.
pub const REDIS_VERSION: &str = "7.2.0";

pub fn ping(_: &Rc<Conn>, args: Args) -> Exec {
    match args.len() {
        1 => now(Frame::Simple("PONG")),
        2 => now(Frame::Bulk(args[1].clone())),
        _ => now(Frame::error("ERR wrong number of arguments for 'ping' command")),
    }
}

pub fn echo(_: &Rc<Conn>, args: Args) -> Exec {
    now(Frame::Bulk(args[1].clone()))
}

pub fn quit(conn: &Rc<Conn>, _: Args) -> Exec {
    conn.quit.set(true);
    now(OK)
}

pub fn select(_: &Rc<Conn>, args: Args) -> Exec {
    now(match int_arg(&args[1]) {
        Ok(0) => OK,
        Ok(_) => Frame::error("ERR DB index is out of range"),
        Err(e) => e,
    })
}

pub fn auth(conn: &Rc<Conn>, args: Args) -> Exec {
    now(match args.len() {
        2 => check_password(conn, None, &args[1]),
        3 => check_password(conn, Some(&args[1]), &args[2]),
        _ => syntax_error(),
    })
}

/// Checks a user (only `default` exists) and password; on success the
/// connection is authenticated.
fn check_password(conn: &Conn, user: Option<&Bytes>, password: &[u8]) -> Frame {
    let Some(expected) = &conn.svc.frontend.password else {
        return Frame::error(
            "ERR AUTH <password> called without any password configured for the default user. \
             Are you sure your configuration is correct?",
        );
    };
    let user_ok = user.is_none_or(|u| u.as_ref() == b"default");
    if user_ok && constant_time_eq(expected, password) {
        conn.authenticated.set(true);
        OK
    } else {
        Frame::error("WRONGPASS invalid username-password pair or user is disabled.")
    }
}

/// Compares without an early exit, so timing does not tell how much of a
/// guess was right (the length still shows).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn hello(conn: &Rc<Conn>, args: Args) -> Exec {
    now(hello_reply(conn, &args).unwrap_or_else(|e| e))
}

fn hello_reply(conn: &Conn, args: &[Bytes]) -> Result<Frame, Frame> {
    let mut proto = conn.proto.get();
    if let Some(version) = args.get(1) {
        proto = match int_arg(version) {
            Ok(2) => Proto::Resp2,
            Ok(3) => Proto::Resp3,
            Ok(_) => return Err(Frame::error("NOPROTO unsupported protocol version")),
            Err(_) => return Err(Frame::error("ERR Protocol version is not an integer or out of range")),
        };
    }
    let (mut credentials, mut name) = (None, None);
    let mut i = 2;
    while i < args.len() {
        match lower(&args[i]).as_str() {
            "auth" if i + 2 < args.len() => {
                credentials = Some((&args[i + 1], &args[i + 2]));
                i += 3;
            }
            "setname" if i + 1 < args.len() => {
                name = Some(args[i + 1].clone());
                i += 2;
            }
            option => return Err(Frame::error(format!("ERR Syntax error in HELLO option '{option}'"))),
        }
    }
    if let Some((user, password)) = credentials {
        let checked = check_password(conn, Some(user), password);
        if checked.is_error() {
            return Err(checked);
        }
    }
    if conn.needs_auth() {
        return Err(Frame::error(
            "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> \
             AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol \
             version at the same time",
        ));
    }
    if let Some(name) = name {
        set_name(conn, name)?;
    }
    conn.proto.set(proto);
    let mode = match conn.svc.frontend.resp_mode {
        RespMode::Proxy => "standalone",
        RespMode::Cluster => "cluster",
    };
    Ok(Frame::Map(vec![
        (Frame::bulk("server"), Frame::bulk("redis")),
        (Frame::bulk("version"), Frame::bulk(REDIS_VERSION)),
        (Frame::bulk("proto"), Frame::Integer(proto.number())),
        (Frame::bulk("id"), Frame::Integer(conn.id as i64)),
        (Frame::bulk("mode"), Frame::bulk(mode)),
        (Frame::bulk("role"), Frame::bulk("master")),
        (Frame::bulk("modules"), Frame::Array(Vec::new())),
    ]))
}

fn set_name(conn: &Conn, name: Bytes) -> Result<(), Frame> {
    if name.iter().any(|b| !(b'!'..=b'~').contains(b)) {
        return Err(Frame::error("ERR Client names cannot contain spaces, newlines or special characters."));
    }
    *conn.name.borrow_mut() = name;
    Ok(())
}

pub fn reset(conn: &Rc<Conn>, _: Args) -> Exec {
    conn.proto.set(Proto::Resp2);
    conn.readonly.set(false);
    *conn.name.borrow_mut() = Bytes::new();
    conn.authenticated.set(conn.svc.frontend.password.is_none());
    now(Frame::Simple("RESET"))
}

pub fn readonly(conn: &Rc<Conn>, _: Args) -> Exec {
    conn.readonly.set(true);
    now(OK)
}

pub fn readwrite(conn: &Rc<Conn>, _: Args) -> Exec {
    conn.readonly.set(false);
    now(OK)
}

/// ASKING matters only while slots migrate, which kvd does not do.
pub fn asking(_: &Rc<Conn>, _: Args) -> Exec {
    now(OK)
}

pub fn client_setname(conn: &Rc<Conn>, args: Args) -> Exec {
    now(set_name(conn, args[2].clone()).map(|()| OK).unwrap_or_else(|e| e))
}

pub fn client_getname(conn: &Rc<Conn>, _: Args) -> Exec {
    let name = conn.name.borrow().clone();
    now(if name.is_empty() { Frame::Null } else { Frame::Bulk(name) })
}

pub fn client_setinfo(conn: &Rc<Conn>, args: Args) -> Exec {
    let value = args[3].clone();
    if value.iter().any(|b| !(b'!'..=b'~').contains(b)) {
        return now(Frame::error("ERR lib-name and lib-ver cannot contain spaces, newlines or special characters."));
    }
    match lower(&args[2]).as_str() {
        "lib-name" => *conn.lib_name.borrow_mut() = value,
        "lib-ver" => *conn.lib_ver.borrow_mut() = value,
        _ => {
            let option = String::from_utf8_lossy(&args[2]).into_owned();
            return now(Frame::error(format!("ERR Unrecognized option '{option}'")));
        }
    }
    now(OK)
}

pub fn client_id(conn: &Rc<Conn>, _: Args) -> Exec {
    now(Frame::Integer(conn.id as i64))
}

pub fn client_info(conn: &Rc<Conn>, _: Args) -> Exec {
    now(Frame::Verbatim(format!("{}\n", conn.info_line())))
}

/// The clients of the core this connection is on (each core keeps its own).
pub fn client_list(_: &Rc<Conn>, args: Args) -> Exec {
    let mut ids: Option<Vec<u64>> = None;
    let mut i = 2;
    while i < args.len() {
        match lower(&args[i]).as_str() {
            "type" if i + 1 < args.len() => {
                if !matches!(lower(&args[i + 1]).as_str(), "normal" | "master" | "replica" | "pubsub") {
                    return now(Frame::error(format!("ERR Unknown client type '{}'", lower(&args[i + 1]))));
                }
                i += 2;
            }
            "id" if i + 1 < args.len() => {
                let mut wanted = Vec::new();
                for a in &args[i + 1..] {
                    match int_arg(a) {
                        Ok(id) if id > 0 => wanted.push(id as u64),
                        _ => return now(Frame::error("ERR Invalid client ID")),
                    }
                }
                ids = Some(wanted);
                i = args.len();
            }
            _ => return now(syntax_error()),
        }
    }
    let mut text = String::new();
    for c in session::clients_of_this_core() {
        if ids.as_ref().is_none_or(|ids| ids.contains(&c.id)) {
            text.push_str(&c.info_line());
            text.push('\n');
        }
    }
    now(Frame::Verbatim(text))
}

/// CLIENT NO-EVICT / NO-TOUCH: kvd evicts nothing and tracks no access
/// times, so both hold already.
pub fn client_flag(_: &Rc<Conn>, args: Args) -> Exec {
    now(match lower(&args[2]).as_str() {
        "on" | "off" => OK,
        _ => syntax_error(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_is_eq() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(constant_time_eq(b"", b""));
    }
}
