//! Server commands that are not INFO or CONFIG: DBSIZE, TIME, DEBUG SLEEP.

use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{later, lower, now, Args, Exec};
use crate::resp::frame::{Frame, OK};
use crate::resp::session::Conn;
use crate::resp::topology;
use crate::service::RespMode;

/// Longest DEBUG SLEEP: it holds only its own connection, but a test
/// harness that asks for longer is waiting on the wrong thing.
const DEBUG_SLEEP_MAX: Duration = Duration::from_secs(60);

/// Keys of the shards this node answers for (see `NodeView::keys`).
pub fn dbsize(conn: &Rc<Conn>, _: Args) -> Exec {
    let conn = conn.clone();
    later(async move {
        match topology::node_view(&conn.svc).await {
            Ok(view) => Frame::Integer(view.keys(leaders_only(&conn)) as i64),
            Err(e) => crate::resp::exec::core_error(e, false),
        }
    })
}

/// Whether key counts cover only the shards this node leads (cluster mode).
pub fn leaders_only(conn: &Conn) -> bool {
    conn.svc.frontend.resp_mode == RespMode::Cluster
}

pub fn time(_: &Rc<Conn>, _: Args) -> Exec {
    let now_ = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    now(Frame::Array(vec![Frame::bulk(now_.as_secs().to_string()), Frame::bulk(now_.subsec_micros().to_string())]))
}

/// Only `DEBUG SLEEP <seconds>` (a pause of this connection, in order with
/// its other commands); kvd has none of Redis's other debugging hooks.
pub fn debug(_: &Rc<Conn>, args: Args) -> Exec {
    let sub = lower(&args[1]);
    if sub != "sleep" || args.len() != 3 {
        return now(Frame::error(format!(
            "ERR DEBUG {} is not supported by kvd (only DEBUG SLEEP)",
            sub.to_uppercase()
        )));
    }
    let seconds = std::str::from_utf8(&args[2]).ok().and_then(|s| s.parse::<f64>().ok());
    let Some(seconds) = seconds.filter(|s| s.is_finite() && *s >= 0.0) else {
        return now(Frame::error("ERR value is not a valid float"));
    };
    if seconds > DEBUG_SLEEP_MAX.as_secs_f64() {
        return now(Frame::error(format!("ERR DEBUG SLEEP is limited to {} seconds", DEBUG_SLEEP_MAX.as_secs())));
    }
    let pause = Duration::from_secs_f64(seconds);
    if pause.is_zero() {
        return now(OK);
    }
    later(async move {
        glommio::timer::sleep(pause).await;
        OK
    })
}
