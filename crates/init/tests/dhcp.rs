//! The DHCP client against Debian's dnsmasq: a veth pair between two network namespaces the
//! test makes, dnsmasq serving a range on one side, the client on the other.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use zos_init::dhcp;
use zos_testkit::net::in_netns;
use zos_testkit::netns::Netns;
use zos_testkit::process::ProcessGuard;

#[test]
fn the_client_takes_a_lease_from_dnsmasq_and_applies_it() {
    if !zos_testkit::require_root("the_client_takes_a_lease_from_dnsmasq_and_applies_it") {
        return;
    }
    let id = std::process::id();
    let server = Netns::create(&format!("zi-srv-{id}")).unwrap();
    let client = Netns::create(&format!("zi-cli-{id}")).unwrap();
    // Both ends are made inside the namespaces: removing them removes the pair.
    server
        .ip(&[
            "link",
            "add",
            "zi-s",
            "type",
            "veth",
            "peer",
            "name",
            "zi-c",
            "netns",
            client.name(),
        ])
        .unwrap();
    server
        .ip(&["addr", "add", "10.77.0.1/24", "dev", "zi-s"])
        .unwrap();
    server.ip(&["link", "set", "zi-s", "up"]).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let leases = dir.path().join("leases");
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        server.name(),
        "dnsmasq",
        "--keep-in-foreground",
    ])
    .args([
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--port=0",
        "--user=root",
    ])
    .args([
        "--interface=zi-s",
        "--bind-interfaces",
        "--log-dhcp",
        "--log-facility=-",
    ])
    .arg("--pid-file=")
    .arg("--dhcp-range=10.77.0.50,10.77.0.60,255.255.255.0,1h")
    .arg("--dhcp-option=option:router,10.77.0.1")
    .arg("--dhcp-option=option:dns-server,10.77.0.1,10.77.0.2")
    .arg(format!("--dhcp-leasefile={}", leases.display()));
    let mut dnsmasq = ProcessGuard::spawn("dnsmasq", cmd, &dir.path().join("dnsmasq.log")).unwrap();

    let resolv = dir.path().join("resolv.conf");
    let resolv2 = resolv.clone();
    let lease = in_netns(client.name(), move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (conn, h, _) = rtnetlink::new_connection().unwrap();
            let task = tokio::spawn(conn);
            dhcp::link_up(&h, "zi-c").await.unwrap();
            let mac = dhcp::link_mac(&h, "zi-c").await.unwrap();
            let config = dhcp::Config {
                wait: Duration::from_secs(2),
                attempts: 10,
            };
            let lease = tokio::task::spawn_blocking(move || dhcp::obtain("zi-c", mac, &config))
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("{}", zos_runtime::error_chain(&e)));
            dhcp::apply(&h, &lease).await.unwrap();
            // Renewing from the leased address keeps it (unicast to the server, ACK back).
            let (l2, config) = (
                lease.clone(),
                dhcp::Config {
                    wait: Duration::from_secs(2),
                    attempts: 1,
                },
            );
            let renewed = tokio::task::spawn_blocking(move || dhcp::renew(&l2, mac, &config))
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("{}", zos_runtime::error_chain(&e)));
            assert_eq!(renewed.address, lease.address);
            assert_eq!(renewed.lease_secs, 3600);
            dhcp::write_resolv_conf(&resolv2, &lease).unwrap();
            task.abort();
            (lease, mac)
        })
    });
    let (lease, mac) = lease;
    let log = std::fs::read_to_string(dir.path().join("dnsmasq.log")).unwrap_or_default();
    let octets = lease.address.octets();
    assert!(
        octets[..3] == [10, 77, 0] && (50..=60).contains(&octets[3]),
        "lease {lease:?} outside the range; dnsmasq said:\n{log}"
    );
    assert_eq!(lease.prefix_len, 24);
    assert_eq!(lease.router, Some(Ipv4Addr::new(10, 77, 0, 1)));
    assert_eq!(
        lease.dns,
        [Ipv4Addr::new(10, 77, 0, 1), Ipv4Addr::new(10, 77, 0, 2)]
    );
    assert_eq!(lease.server, Ipv4Addr::new(10, 77, 0, 1));

    // The address is on the link, the default route through the router, the resolver written.
    let addrs = client.ip(&["-4", "addr", "show", "dev", "zi-c"]).unwrap();
    assert!(
        addrs.contains(&format!("inet {}/24", lease.address)),
        "{addrs}"
    );
    let routes = client.ip(&["-4", "route", "show", "default"]).unwrap();
    assert!(
        routes.contains("default via 10.77.0.1 dev zi-c"),
        "{routes}"
    );
    let text = std::fs::read_to_string(&resolv).unwrap();
    assert!(
        text.contains("nameserver 10.77.0.1\nnameserver 10.77.0.2\n"),
        "{text}"
    );
    // dnsmasq recorded the lease for our hardware address.
    let mac_text = mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    let recorded = std::fs::read_to_string(&leases).unwrap_or_default();
    assert!(
        recorded.contains(&mac_text) && recorded.contains(&lease.address.to_string()),
        "{recorded}"
    );
    // And the server answers on the leased address.
    assert!(zos_testkit::net::ping(client.name(), "10.77.0.1", 1));
    dnsmasq.stop(Duration::from_secs(5));
}
