//! zosd's side of the gateway process: started detached in a namespace of its own (the node's
//! public namespace stands in), adopted by a "restarted zosd" with its table and an open
//! WebSocket untouched, and started anew after a kill -9.

mod common;

use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use common::*;
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use zos_gateway::Tls;
use zos_gateway::control::{Answer, Request};
use zos_gateway::supervisor::{Ensured, GatewayProcess};
use zos_runtime::supervise;
use zos_testkit::net::in_netns;
use zos_testkit::netns::Netns;

/// `zos-gateway`, to run inside `ns`.
fn command_in(ns: &str) -> Command {
    let fd = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_zos-gateway"));
    // SAFETY: setns is a plain system call, safe between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::setns(fd.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)
        });
    }
    cmd
}

async fn route_count(gp: &GatewayProcess) -> usize {
    match gp
        .client()
        .await
        .unwrap()
        .call(&Request::Status {})
        .await
        .unwrap()
    {
        Answer::Status { routes } => routes.len(),
        a => panic!("{a:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_outlives_zosd_is_adopted_with_its_connections_and_restarted_after_a_kill() {
    if !zos_testkit::require_root("the_gateway_outlives_zosd") {
        return;
    }
    let ns = Netns::create(&format!("zgw-pub-{}", std::process::id())).unwrap();
    let backend = "127.0.0.1:8080".parse().unwrap();
    backend_in(ns.name(), "a", backend);
    let dir = tempfile::tempdir().unwrap();
    let gp = GatewayProcess {
        run_dir: dir.path().join("gateway"),
        http: "127.0.0.1:18080".parse().unwrap(),
        https: "127.0.0.1:18443".parse().unwrap(),
        extra_args: vec![],
    };
    struct Stop(GatewayProcess);
    impl Drop for Stop {
        fn drop(&mut self) {
            self.0.stop(Duration::from_secs(2));
        }
    }
    let _stop = Stop(gp.clone());

    let first = gp.ensure(command_in(ns.name())).await.unwrap();
    assert!(matches!(first, Ensured::Started(_)), "{first:?}");
    let routes = vec![route("ws", "ws.gw.example", Tls::Plain, &[backend])];
    gp.client()
        .await
        .unwrap()
        .call(&Request::SetRoutes { routes })
        .await
        .unwrap();

    // A WebSocket through the gateway, from inside the namespace.
    let tcp = in_netns(ns.name(), || std::net::TcpStream::connect(gp.http).unwrap());
    tcp.set_nonblocking(true).unwrap();
    let tcp = tokio::net::TcpStream::from_std(tcp).unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async("ws://ws.gw.example/ws", tcp)
        .await
        .unwrap();
    let mut echo = async |text: &str| {
        ws.send(Message::Text(text.into())).await.unwrap();
        ws.next()
            .await
            .unwrap()
            .unwrap()
            .into_text()
            .unwrap()
            .to_string()
    };
    assert_eq!(echo("before").await, "echo before");

    // zosd restarts: a new value with the same configuration adopts the same process; the
    // table and the open connection are untouched.
    let again = GatewayProcess { ..gp.clone() };
    let adopted = again.ensure(command_in(ns.name())).await.unwrap();
    assert_eq!(adopted, Ensured::Adopted(first.pid()));
    assert_eq!(route_count(&again).await, 1);
    assert_eq!(echo("after").await, "echo after");

    // kill -9: the next ensure starts a new gateway, with an empty table for zosd to fill.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first.pid()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    eventually("the killed gateway gone", || async {
        !supervise::alive(first.pid(), &gp.marker())
    })
    .await;
    let third = gp.ensure(command_in(ns.name())).await.unwrap();
    assert!(
        matches!(third, Ensured::Started(p) if p != first.pid()),
        "{third:?}"
    );
    assert_eq!(route_count(&gp).await, 0);
}
