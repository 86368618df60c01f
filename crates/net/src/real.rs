//! [`LinuxNetworker`]: the network module on a real kernel (rtnetlink, nftables, WireGuard).

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net};
use tokio::sync::Mutex;
use zos_types::TwinId;
use zos_types::deployment::WorkloadId;
use zos_types::workload::Network;

use super::link::{self, Route};
use super::names::{self, Names, NetId, inner};
use super::netns::{self, Ns};
use super::nft::{self, PortFilter};
use super::rules;
use super::state::{NodeRecord, NrRecord, PortRecord, PortTarget, STATE_FILE, State, WlRef};
use super::wireguard::{self, WgBackend, WgStatus};
use super::{
    Attachment, Interface, NetworkConfig, NetworkError, NetworkInfo, Networker, PublicIpRequest,
    PublicSetup, ReconcileReport, Result, VmLink,
};

/// How long a WireGuard process gets to stop on SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// The network module on this machine's kernel.
#[derive(Debug)]
pub struct LinuxNetworker {
    cfg: NetworkConfig,
    names: Names,
    backend: WgBackend,
    state: Mutex<State>,
}

/// What bringing a network resource up found about its WireGuard process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WgOutcome {
    Kept,
    Started,
}

impl LinuxNetworker {
    /// Opens the module with the state left by an earlier run (nothing is changed yet; call
    /// [`Networker::reconcile`] or [`Networker::setup_node`]).
    pub fn open(cfg: NetworkConfig) -> Result<Self> {
        if !names::valid_prefix(&cfg.prefix) {
            return Err(NetworkError::Invalid(format!(
                "node prefix {:?} may only hold a-z, 0-9 and '-', at most {} characters",
                cfg.prefix,
                names::PREFIX_MAX
            )));
        }
        let state = State::load(&cfg.state_dir.join(STATE_FILE))?;
        let backend = cfg.wireguard.resolve();
        Ok(Self {
            names: Names::new(&cfg.prefix),
            backend,
            state: Mutex::new(state),
            cfg,
        })
    }

    /// The names this node uses.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The WireGuard implementation new network resources get.
    pub fn backend(&self) -> WgBackend {
        self.backend
    }

    fn host(&self) -> Ns {
        Ns::Host(self.cfg.host_netns.clone())
    }

    fn state_path(&self) -> PathBuf {
        self.cfg.state_dir.join(STATE_FILE)
    }

    fn save(&self, st: &State) -> Result<()> {
        st.save(&self.state_path())
    }

    /// Loads the host's tables from the state: WireGuard ports and VM port filters.
    async fn host_rules(&self, st: &State) -> Result<()> {
        let filters: Vec<PortFilter> = st
            .ports
            .values()
            .map(|p| PortFilter {
                ifname: p.ifname.clone(),
                mac: p.mac,
                ipv4: p.ipv4.map(|n| n.addr()),
                ipv6: p.ipv6.map(|n| n.addr()),
            })
            .collect();
        let text = nft::host_ruleset(
            &self.names.host_table(),
            &self.names.host_dmz(),
            &st.wg_ports(),
            &filters,
        );
        nft::apply(&self.host(), &self.cfg.nft, &text).await
    }

    // ---- node ----

    /// Sets the node's own network up: forwarding in the host, the ndmz namespace and its
    /// link to the host, then the public namespace as `public` says; records it and rewrites
    /// the host's rules.
    async fn setup_node_locked(&self, st: &mut State, public: Option<PublicSetup>) -> Result<()> {
        rules::check_public_change(st, public.as_ref())?;
        let old_exit = st
            .node
            .as_ref()
            .and_then(|n| n.public.as_ref())
            .map(|p| p.exit_iface.clone());
        if let Some(p) = &public {
            self.check_public(p).await?;
        }
        netns::sysctl(&self.host(), "ipv4/ip_forward", "1").await?;
        self.ndmz_up().await?;
        match &public {
            Some(p) => {
                if let Some(old) = old_exit.filter(|o| *o != p.exit_iface) {
                    netns::in_netns(&self.host(), move |h| async move {
                        link::set_nomaster(&h, &old).await
                    })
                    .await?;
                }
                self.public_up(p).await?
            }
            None => self.public_down().await?,
        }
        st.node = Some(NodeRecord { public });
        self.save(st)?;
        self.host_rules(st).await?;
        tracing::info!(prefix = %self.cfg.prefix, "node network set up");
        Ok(())
    }

    /// Refuses an invalid public config, or one whose exit interface the host does not have.
    async fn check_public(&self, p: &PublicSetup) -> Result<()> {
        p.config
            .validate()
            .map_err(|e| NetworkError::Invalid(format!("public config: {e}")))?;
        let exit = p.exit_iface.clone();
        let present = netns::in_netns(&self.host(), move |h| async move {
            Ok(link::get(&h, &exit).await?.is_some())
        })
        .await?;
        if !present {
            return Err(NetworkError::NoLink(p.exit_iface.clone()));
        }
        Ok(())
    }

    /// Makes (or repairs) the ndmz namespace, its link to the host and its rules.
    async fn ndmz_up(&self) -> Result<()> {
        let ndmz_name = self.names.ndmz_ns();
        let made = netns::create(&ndmz_name).await?;
        let ndmz = Ns::Named(ndmz_name);
        netns::sysctl(&ndmz, "ipv4/ip_forward", "1").await?;
        let (dmz, dmzp) = (self.names.host_dmz(), self.names.host_dmz_peer());
        let ndmz_ns = ndmz.clone();
        netns::in_netns(&self.host(), move |h| async move {
            if made {
                link::delete(&h, &dmz).await?;
            }
            if link::get(&h, &dmz).await?.is_none() {
                link::delete(&h, &dmzp).await?;
                link::add_veth(&h, &dmz, &dmzp).await?;
                let fd = ndmz_ns.open()?;
                link::move_to(&h, &dmzp, fd.as_raw_fd(), inner::NDMZ_UP).await?;
            }
            link::set_addrs(
                &h,
                &dmz,
                &[IpNet::V4(
                    Ipv4Net::new(names::HOST_DMZ_ADDR, 30).expect("valid"),
                )],
            )
            .await?;
            link::set_up(&h, &dmz).await?;
            link::ensure_route(
                &h,
                &dmz,
                Route::via(names::ndmz_space(), names::NDMZ_UP_ADDR),
            )
            .await
        })
        .await?;
        netns::in_netns(&ndmz, |h| async move {
            link::set_addrs(
                &h,
                inner::NDMZ_UP,
                &[IpNet::V4(
                    Ipv4Net::new(names::NDMZ_UP_ADDR, 30).expect("valid"),
                )],
            )
            .await?;
            link::set_up(&h, inner::NDMZ_UP).await?;
            link::ensure_route(
                &h,
                inner::NDMZ_UP,
                Route::via(Ipv4Net::default(), names::HOST_DMZ_ADDR),
            )
            .await
        })
        .await?;
        nft::apply(&ndmz, &self.cfg.nft, &nft::ndmz_ruleset()).await
    }

    async fn public_up(&self, p: &PublicSetup) -> Result<()> {
        let host = self.host();
        let public_name = self.names.public_ns();
        let made = netns::create(&public_name).await?;
        let public_ns = Ns::Named(public_name);
        let (bridge, veth, peer, exit) = (
            self.names.public_bridge(),
            self.names.public_veth(),
            self.names.public_veth_peer(),
            p.exit_iface.clone(),
        );
        let target = public_ns.clone();
        netns::in_netns(&host, move |h| async move {
            link::ensure_bridge(&h, &bridge).await?;
            link::set_master(&h, &exit, &bridge).await?;
            link::set_up(&h, &exit).await?;
            if made {
                link::delete(&h, &veth).await?;
            }
            if link::get(&h, &veth).await?.is_none() {
                link::delete(&h, &peer).await?;
                link::add_veth(&h, &veth, &peer).await?;
                let fd = target.open()?;
                link::move_to(&h, &peer, fd.as_raw_fd(), inner::PUBLIC_IF).await?;
            }
            link::set_master(&h, &veth, &bridge).await?;
            link::set_up(&h, &veth).await
        })
        .await?;
        let mac = names::mac_from(&format!("{}:public", self.cfg.mac_seed));
        let cfg = p.config.clone();
        netns::in_netns(&public_ns, move |h| async move {
            link::set_mac(&h, inner::PUBLIC_IF, mac).await?;
            let mut addrs = vec![IpNet::V4(cfg.ipv4)];
            if let Some(v6) = cfg.ipv6 {
                addrs.push(IpNet::V6(v6));
            }
            link::set_addrs(&h, inner::PUBLIC_IF, &addrs).await?;
            link::set_up(&h, inner::PUBLIC_IF).await?;
            link::ensure_route(
                &h,
                inner::PUBLIC_IF,
                Route::via(Ipv4Net::default(), cfg.gw4),
            )
            .await?;
            if let Some(gw6) = cfg.gw6 {
                link::ensure_default_v6(&h, inner::PUBLIC_IF, gw6).await?;
            }
            Ok(())
        })
        .await?;
        nft::apply(&public_ns, &self.cfg.nft, &nft::public_ruleset()).await
    }

    async fn public_down(&self) -> Result<()> {
        let (bridge, veth, peer) = (
            self.names.public_bridge(),
            self.names.public_veth(),
            self.names.public_veth_peer(),
        );
        netns::in_netns(&self.host(), move |h| async move {
            link::delete(&h, &veth).await?;
            link::delete(&h, &peer).await?;
            link::delete(&h, &bridge).await
        })
        .await?;
        netns::delete(&self.names.public_ns()).await
    }

    // ---- network resources ----

    /// Makes (or repairs) the network resource of `rec` and configures its WireGuard; `force`
    /// sends the key and port again even when they look applied.
    async fn build_nr(&self, rec: &mut NrRecord, force: bool) -> Result<WgOutcome> {
        let nr_name = self.names.nr_ns(&rec.netid);
        let made = netns::create(&nr_name).await?;
        let nr = Ns::Named(nr_name);
        netns::sysctl(&nr, "ipv4/ip_forward", "1").await?;
        self.nr_bridge_link(&rec.netid, &nr, made).await?;
        self.nr_ndmz_link(rec, &nr, made).await?;
        let has_wg = nr_inside(rec, &nr).await?;
        nft::apply(&nr, &self.cfg.nft, &nft::nr_ruleset()).await?;
        let outcome = self.nr_wireguard(rec, &nr, has_wg, force).await?;
        nr_wg_routes(rec, &nr).await?;
        Ok(outcome)
    }

    /// The bridge in the host and the resource's gateway interface on it; `made` (a new
    /// namespace) makes the host's end again.
    async fn nr_bridge_link(&self, id: &NetId, nr: &Ns, made: bool) -> Result<()> {
        let (bridge, lan, lan_peer) = (
            self.names.nr_bridge(id),
            self.names.nr_lan_host(id),
            self.names.nr_lan_peer(id),
        );
        let target = nr.clone();
        netns::in_netns(&self.host(), move |h| async move {
            link::ensure_bridge(&h, &bridge).await?;
            if made {
                link::delete(&h, &lan).await?;
            }
            if link::get(&h, &lan).await?.is_none() {
                link::delete(&h, &lan_peer).await?;
                link::add_veth(&h, &lan, &lan_peer).await?;
                let fd = target.open()?;
                link::move_to(&h, &lan_peer, fd.as_raw_fd(), inner::NR_LAN).await?;
            }
            link::set_master(&h, &lan, &bridge).await?;
            link::set_up(&h, &lan).await
        })
        .await
    }

    /// The resource's link to ndmz, with the route to its transit address there; `made` (a
    /// new namespace) makes ndmz's end again.
    async fn nr_ndmz_link(&self, rec: &NrRecord, nr: &Ns, made: bool) -> Result<()> {
        let id = &rec.netid;
        let transit = names::slot_address(rec.slot);
        let (up, up_peer) = (inner::ndmz_nr(id), inner::ndmz_nr_peer(id));
        let target = nr.clone();
        netns::in_netns(&Ns::Named(self.names.ndmz_ns()), move |h| async move {
            if made {
                link::delete(&h, &up).await?;
            }
            if link::get(&h, &up).await?.is_none() {
                link::delete(&h, &up_peer).await?;
                link::add_veth(&h, &up, &up_peer).await?;
                let fd = target.open()?;
                link::move_to(&h, &up_peer, fd.as_raw_fd(), inner::NR_DMZ).await?;
            }
            link::set_addrs(
                &h,
                &up,
                &[IpNet::V4(
                    Ipv4Net::new(names::NDMZ_GATEWAY, 32).expect("valid"),
                )],
            )
            .await?;
            link::set_up(&h, &up).await?;
            link::ensure_route(
                &h,
                &up,
                Route::dev(Ipv4Net::new(transit, 32).expect("valid")).src(names::NDMZ_GATEWAY),
            )
            .await
        })
        .await
    }

    /// Configures the resource's WireGuard interface (made or restarted first when needed);
    /// `force` sends the key and port again even when they look applied.
    async fn nr_wireguard(
        &self,
        rec: &mut NrRecord,
        nr: &Ns,
        has_wg: bool,
        force: bool,
    ) -> Result<WgOutcome> {
        let net = rec.network.clone();
        let outcome = self.ensure_wg(rec, nr, has_wg).await?;
        let key_changed = rec.applied_key.as_deref() != Some(net.wireguard_private_key.as_str());
        let ops = wireguard::sync(
            nr,
            &self.cfg.wg,
            rec.backend,
            &rec.wg_ifname,
            &net,
            force || outcome == WgOutcome::Started,
            key_changed,
        )
        .await?;
        rec.applied_key = Some(net.wireguard_private_key.clone());
        if !ops.is_empty() {
            tracing::debug!(netid = %rec.netid, changes = ops.len(), "wireguard configured");
        }
        Ok(outcome)
    }

    /// Makes sure the WireGuard interface exists in `nr`: keeps a running one, otherwise
    /// (re)starts it.
    async fn ensure_wg(&self, rec: &mut NrRecord, nr: &Ns, has_wg: bool) -> Result<WgOutcome> {
        let ifname = rec.wg_ifname.clone();
        let host = self.host();
        match rec.backend {
            WgBackend::Userspace => {
                let running = rec
                    .pid
                    .is_some_and(|pid| wireguard::is_our_process(pid, &ifname));
                if running && has_wg {
                    return Ok(WgOutcome::Kept);
                }
                if running || rec.pid.is_some() {
                    tracing::warn!(ifname = %ifname, pid = ?rec.pid, "userspace wireguard lost its interface or died; restarting");
                }
                wireguard::stop_userspace(rec.pid, &ifname, STOP_GRACE).await;
                let stale = ifname.clone();
                netns::in_netns(nr, move |h| async move { link::delete(&h, &stale).await }).await?;
                let stale = ifname.clone();
                netns::in_netns(
                    &host,
                    move |h| async move { link::delete(&h, &stale).await },
                )
                .await?;
                let log = self.cfg.run_dir.join(format!("{ifname}.log"));
                let pid =
                    wireguard::start_userspace(&host, &self.cfg.boringtun, &ifname, &log).await?;
                rec.pid = Some(pid);
                let target = nr.clone();
                let name = ifname.clone();
                let moved = netns::in_netns(&host, move |h| async move {
                    link::set_mtu(&h, &name, wireguard::WG_MTU).await?;
                    let fd = target.open()?;
                    link::move_to(&h, &name, fd.as_raw_fd(), &name).await
                })
                .await;
                if let Err(e) = moved {
                    wireguard::stop_userspace(Some(pid), &ifname, STOP_GRACE).await;
                    rec.pid = None;
                    return Err(e);
                }
                tracing::info!(ifname = %ifname, pid, "userspace wireguard started");
                Ok(WgOutcome::Started)
            }
            WgBackend::Kernel => {
                if has_wg {
                    return Ok(WgOutcome::Kept);
                }
                let target = nr.clone();
                let name = ifname.clone();
                netns::in_netns(&host, move |h| async move {
                    link::delete(&h, &name).await?;
                    link::add_wireguard(&h, &name).await?;
                    link::set_mtu(&h, &name, wireguard::WG_MTU).await?;
                    let fd = target.open()?;
                    link::move_to(&h, &name, fd.as_raw_fd(), &name).await
                })
                .await?;
                Ok(WgOutcome::Started)
            }
        }
    }

    /// Removes everything of network `id` (recorded or not): process, links, namespace, ports.
    async fn destroy_nr(&self, st: &mut State, id: &NetId) -> Result<()> {
        let rec = st.networks.get(id).cloned();
        let wg_if = rec
            .as_ref()
            .map(|r| r.wg_ifname.clone())
            .unwrap_or_else(|| self.names.nr_wg(id));
        let ports: Vec<String> = st
            .ports
            .values()
            .filter(|p| matches!(&p.target, PortTarget::Private { netid, .. } if netid == id))
            .map(|p| p.ifname.clone())
            .collect();
        for ifname in &ports {
            self.delete_port_link(ifname).await?;
            st.ports.remove(ifname);
        }
        let pid = rec.as_ref().and_then(|r| r.pid);
        wireguard::stop_userspace(pid, &wg_if, STOP_GRACE).await;
        for (pid, name) in wireguard::processes_with_prefix(&wg_if) {
            if name == wg_if {
                wireguard::stop_userspace(Some(pid), &wg_if, STOP_GRACE).await;
            }
        }
        let (bridge, lan, lan_peer, wg_host) = (
            self.names.nr_bridge(id),
            self.names.nr_lan_host(id),
            self.names.nr_lan_peer(id),
            wg_if.clone(),
        );
        netns::in_netns(&self.host(), move |h| async move {
            link::delete(&h, &lan).await?;
            link::delete(&h, &lan_peer).await?;
            link::delete(&h, &wg_host).await?;
            link::delete(&h, &bridge).await
        })
        .await?;
        let ndmz = self.names.ndmz_ns();
        if netns::exists(&ndmz) {
            let (up, up_peer) = (inner::ndmz_nr(id), inner::ndmz_nr_peer(id));
            netns::in_netns(&Ns::Named(ndmz), move |h| async move {
                link::delete(&h, &up).await?;
                link::delete(&h, &up_peer).await
            })
            .await?;
        }
        let nr_name = self.names.nr_ns(id);
        if netns::exists(&nr_name) {
            let wg_nr = wg_if.clone();
            netns::in_netns(&Ns::Named(nr_name.clone()), move |h| async move {
                link::delete(&h, &wg_nr).await?;
                link::delete(&h, inner::NR_LAN).await?;
                link::delete(&h, inner::NR_DMZ).await
            })
            .await?;
            netns::delete(&nr_name).await?;
        }
        let _ = std::fs::remove_file(wireguard::uapi_socket(&wg_if));
        st.networks.remove(id);
        Ok(())
    }

    async fn apply_network_locked(
        &self,
        st: &mut State,
        wl: &WorkloadId,
        net: &Network,
    ) -> Result<(NetworkInfo, WgOutcome)> {
        let plan = rules::plan_network(st, &self.names, wl, net)?;
        let mut rec = plan.existing.clone().unwrap_or_else(|| NrRecord {
            netid: plan.netid.clone(),
            owner: WlRef::from(wl),
            network: net.clone(),
            slot: plan.slot,
            backend: self.backend,
            wg_ifname: plan.wg_ifname.clone(),
            pid: None,
            applied_key: None,
        });
        rec.network = net.clone();
        st.networks.insert(plan.netid.clone(), rec.clone());
        self.save(st)?;
        let built = self.build_nr(&mut rec, false).await;
        match built {
            Ok(outcome) => {
                st.networks.insert(plan.netid.clone(), rec.clone());
                self.save(st)?;
                self.host_rules(st).await?;
                if plan.existing.is_none() {
                    tracing::info!(twin = wl.twin, contract = wl.contract, network = %wl.name, netid = %plan.netid, "network resource created");
                }
                Ok((rules::network_info(&self.names, &rec), outcome))
            }
            Err(e) => {
                match plan.existing {
                    // A refused change leaves the resource as it was.
                    Some(mut old) => {
                        old.pid = rec.pid;
                        old.applied_key = rec.applied_key.clone();
                        if let Err(again) = self.build_nr(&mut old, true).await {
                            tracing::warn!(netid = %plan.netid, error = %again, "cannot restore the network after a failed change");
                        }
                        st.networks.insert(plan.netid.clone(), old);
                    }
                    // A failed creation leaves nothing behind.
                    None => {
                        st.networks.insert(plan.netid.clone(), rec);
                        if let Err(again) = self.destroy_nr(st, &plan.netid).await {
                            tracing::warn!(netid = %plan.netid, error = %again, "cannot clean up a failed network");
                        }
                    }
                }
                self.save(st)?;
                Err(e)
            }
        }
    }

    // ---- ports ----

    async fn make_port_link(&self, st: &State, p: &PortRecord, link_kind: &VmLink) -> Result<()> {
        let bridge = rules::port_bridge(&self.names, p);
        let ifname = p.ifname.clone();
        match link_kind {
            VmLink::Tap => {
                netns::in_netns(&self.host(), move |h| async move {
                    if link::get(&h, &ifname).await?.is_none() {
                        link::create_tap(&ifname)?;
                    }
                    link::set_master(&h, &ifname, &bridge).await?;
                    link::set_up(&h, &ifname).await
                })
                .await
            }
            VmLink::Veth {
                netns: path,
                ifname: inside,
                default_route,
            } => {
                let target = Ns::Path(path.clone());
                let temp = self
                    .names
                    .temp_peer(&p.ifname[self.names.prefix().len() + 1..]);
                let inside_name = inside.clone();
                let t = target.clone();
                netns::in_netns(&self.host(), move |h| async move {
                    if link::get(&h, &ifname).await?.is_none() {
                        link::delete(&h, &temp).await?;
                        link::add_veth(&h, &ifname, &temp).await?;
                        let fd = t.open()?;
                        link::move_to(&h, &temp, fd.as_raw_fd(), &inside_name).await?;
                    }
                    link::set_master(&h, &ifname, &bridge).await?;
                    link::set_up(&h, &ifname).await
                })
                .await?;
                let mac = p.mac;
                let mut addrs: Vec<IpNet> = Vec::new();
                if let Some(a) = p.ipv4 {
                    addrs.push(IpNet::V4(a));
                }
                if let Some(a) = p.ipv6 {
                    addrs.push(IpNet::V6(a));
                }
                let gw4 = p.gateway4;
                let gw6 = p.gateway6;
                let mut routes: Vec<Route> = Vec::new();
                if let Some(gw) = gw4 {
                    if *default_route {
                        routes.push(Route::via(Ipv4Net::default(), gw));
                    }
                    for r in rules::port_routes(st, p) {
                        routes.push(Route::via(r, gw));
                    }
                }
                let inside = inside.clone();
                let default_v6 = *default_route;
                netns::in_netns(&target, move |h| async move {
                    link::set_mac(&h, &inside, mac).await?;
                    link::set_addrs(&h, &inside, &addrs).await?;
                    link::set_up(&h, &inside).await?;
                    for r in routes {
                        link::ensure_route(&h, &inside, r).await?;
                    }
                    if default_v6 && let Some(gw) = gw6 {
                        link::ensure_default_v6(&h, &inside, gw).await?;
                    }
                    Ok(())
                })
                .await
            }
        }
    }

    async fn delete_port_link(&self, ifname: &str) -> Result<()> {
        let name = ifname.to_string();
        netns::in_netns(&self.host(), move |h| async move {
            link::delete(&h, &name).await
        })
        .await
    }

    async fn attach_locked(
        &self,
        st: &mut State,
        mut port: PortRecord,
        link_kind: VmLink,
    ) -> Result<Attachment> {
        rules::check_link(&link_kind)?;
        if let Some(old) = st.ports.get(&port.ifname)
            && old.link.as_ref().is_some_and(|l| *l != link_kind)
        {
            // Another kind of link or another namespace: make it again.
            self.delete_port_link(&port.ifname).await?;
        }
        port.link = Some(link_kind.clone());
        let previous = st.ports.insert(port.ifname.clone(), port.clone());
        // The filter is in place before the link exists.
        let made = async {
            self.host_rules(st).await?;
            self.make_port_link(st, &port, &link_kind).await
        }
        .await;
        if let Err(e) = made {
            self.delete_port_link(&port.ifname).await.ok();
            match previous {
                Some(p) => st.ports.insert(p.ifname.clone(), p),
                None => st.ports.remove(&port.ifname),
            };
            self.host_rules(st).await.ok();
            return Err(e);
        }
        self.save(st)?;
        Ok(rules::attachment(&self.names, st, &port))
    }

    async fn teardown_locked(&self, st: &mut State) -> Result<()> {
        let ports: Vec<String> = st.ports.keys().cloned().collect();
        for p in ports {
            self.delete_port_link(&p).await?;
            st.ports.remove(&p);
        }
        let ids: Vec<NetId> = st.networks.keys().cloned().collect();
        for id in ids {
            self.destroy_nr(st, &id).await?;
        }
        // Namespaces of resources the state lost track of.
        let nr_prefix = format!("{}n-", self.cfg.prefix);
        for ns in netns::list(&nr_prefix) {
            let id = NetId::from_raw(&ns[nr_prefix.len()..]);
            self.destroy_nr(st, &id).await?;
        }
        self.public_down().await?;
        let (dmz, dmzp) = (self.names.host_dmz(), self.names.host_dmz_peer());
        netns::in_netns(&self.host(), move |h| async move {
            link::delete(&h, &dmz).await?;
            link::delete(&h, &dmzp).await
        })
        .await?;
        netns::delete(&self.names.ndmz_ns()).await?;
        let table = self.names.host_table();
        nft::delete_tables(
            &self.host(),
            &self.cfg.nft,
            &[("inet", table.as_str()), ("bridge", table.as_str())],
        )
        .await?;
        *st = State::default();
        match std::fs::remove_file(self.state_path()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(NetworkError::System {
                    op: "removing",
                    target: self.state_path().display().to_string(),
                    source,
                });
            }
        }
        tracing::info!(prefix = %self.cfg.prefix, "node network removed");
        Ok(())
    }
}

impl Networker for LinuxNetworker {
    async fn setup_node(&self, public: Option<PublicSetup>) -> Result<()> {
        let mut st = self.state.lock().await;
        self.setup_node_locked(&mut st, public).await
    }

    async fn reconcile(&self) -> Result<ReconcileReport> {
        let mut st = self.state.lock().await;
        let mut report = ReconcileReport::default();
        let Some(node) = st.node.clone() else {
            return Ok(report);
        };
        self.setup_node_locked(&mut st, node.public).await?;
        let records: Vec<NrRecord> = st.networks.values().cloned().collect();
        for rec in records {
            let wl = rec.owner.id();
            match self.apply_network_locked(&mut st, &wl, &rec.network).await {
                Ok((_, WgOutcome::Kept)) => {
                    report.networks += 1;
                    if rec.backend == WgBackend::Userspace {
                        report.adopted += 1;
                    }
                }
                Ok((_, WgOutcome::Started)) => {
                    report.networks += 1;
                    report.restarted += 1;
                }
                Err(e) => {
                    tracing::error!(twin = wl.twin, network = %wl.name, error = %e, "cannot bring a network back");
                    report
                        .failed
                        .push(format!("network {} of twin {}: {e}", wl.name, wl.twin));
                }
            }
        }
        let ports: Vec<PortRecord> = st.ports.values().cloned().collect();
        for p in ports {
            let Some(kind) = p.link.clone() else {
                continue;
            };
            match self.make_port_link(&st, &p, &kind).await {
                Ok(()) => report.ports += 1,
                Err(e) => {
                    tracing::error!(ifname = %p.ifname, error = %e, "cannot bring a port back");
                    report.failed.push(format!("port {}: {e}", p.ifname));
                }
            }
        }
        self.host_rules(&st).await?;
        tracing::info!(
            networks = report.networks,
            adopted = report.adopted,
            restarted = report.restarted,
            ports = report.ports,
            "network reconciled"
        );
        Ok(report)
    }

    async fn teardown_node(&self) -> Result<()> {
        let mut st = self.state.lock().await;
        self.teardown_locked(&mut st).await
    }

    async fn apply_network(&self, wl: &WorkloadId, net: &Network) -> Result<NetworkInfo> {
        let mut st = self.state.lock().await;
        self.apply_network_locked(&mut st, wl, net)
            .await
            .map(|(info, _)| info)
    }

    async fn delete_network(&self, wl: &WorkloadId) -> Result<()> {
        let mut st = self.state.lock().await;
        let id = NetId::new(wl.twin, &wl.name);
        if let Some(rec) = st.networks.get(&id)
            && rec.owner.contract != wl.contract
        {
            tracing::warn!(twin = wl.twin, contract = wl.contract, network = %wl.name, owner = rec.owner.contract, "network belongs to another contract; not removed");
            return Ok(());
        }
        let known = st.networks.contains_key(&id);
        self.destroy_nr(&mut st, &id).await?;
        self.save(&st)?;
        self.host_rules(&st).await?;
        if known {
            tracing::info!(twin = wl.twin, contract = wl.contract, network = %wl.name, netid = %id, "network resource removed");
        }
        Ok(())
    }

    async fn network_info(&self, twin: TwinId, name: &str) -> Result<Option<NetworkInfo>> {
        let st = self.state.lock().await;
        Ok(st
            .network(twin, name)
            .map(|r| rules::network_info(&self.names, r)))
    }

    async fn attach_private(
        &self,
        vm: &WorkloadId,
        network: &str,
        ip: Ipv4Addr,
        link: VmLink,
    ) -> Result<Attachment> {
        let mut st = self.state.lock().await;
        let port = rules::plan_private(&st, &self.names, vm, network, ip)?;
        self.attach_locked(&mut st, port, link).await
    }

    async fn detach_private(&self, vm: &WorkloadId, network: &str) -> Result<()> {
        let mut st = self.state.lock().await;
        let ifname = self.names.private_tap(&vm.short(&format!("net:{network}")));
        if st
            .ports
            .get(&ifname)
            .is_some_and(|p| p.owner != WlRef::from(vm))
        {
            return Ok(());
        }
        self.delete_port_link(&ifname).await?;
        if st.ports.remove(&ifname).is_some() {
            self.save(&st)?;
            self.host_rules(&st).await?;
        }
        Ok(())
    }

    async fn setup_public_ip(
        &self,
        ip_wl: &WorkloadId,
        req: &PublicIpRequest,
    ) -> Result<Attachment> {
        let mut st = self.state.lock().await;
        let mut port = rules::plan_public(&st, &self.names, ip_wl, req)?;
        if let Some(old) = st.ports.get(&port.ifname) {
            port.link = old.link.clone();
        }
        let previous = st.ports.insert(port.ifname.clone(), port.clone());
        if let Err(e) = self.host_rules(&st).await {
            match previous {
                Some(p) => st.ports.insert(p.ifname.clone(), p),
                None => st.ports.remove(&port.ifname),
            };
            return Err(e);
        }
        self.save(&st)?;
        if previous.is_none() {
            tracing::info!(twin = ip_wl.twin, contract = ip_wl.contract, workload = %ip_wl.name, ipv4 = ?port.ipv4, "public ip set up");
        }
        Ok(rules::attachment(&self.names, &st, &port))
    }

    async fn attach_public(&self, ip_wl: &WorkloadId, link: VmLink) -> Result<Attachment> {
        let mut st = self.state.lock().await;
        let port = rules::public_port(&st, &self.names, ip_wl)
            .cloned()
            .ok_or_else(|| NetworkError::NoPublicIp(ip_wl.to_string()))?;
        self.attach_locked(&mut st, port, link).await
    }

    async fn detach_public(&self, ip_wl: &WorkloadId) -> Result<()> {
        let mut st = self.state.lock().await;
        let Some(mut port) = rules::public_port(&st, &self.names, ip_wl).cloned() else {
            return Ok(());
        };
        self.delete_port_link(&port.ifname).await?;
        port.link = None;
        st.ports.insert(port.ifname.clone(), port);
        self.save(&st)
    }

    async fn teardown_public_ip(&self, ip_wl: &WorkloadId) -> Result<()> {
        let mut st = self.state.lock().await;
        let Some(port) = rules::public_port(&st, &self.names, ip_wl).cloned() else {
            return Ok(());
        };
        self.delete_port_link(&port.ifname).await?;
        st.ports.remove(&port.ifname);
        self.save(&st)?;
        self.host_rules(&st).await?;
        tracing::info!(twin = ip_wl.twin, contract = ip_wl.contract, workload = %ip_wl.name, "public ip removed");
        Ok(())
    }

    async fn wireguard_ports(&self) -> Result<Vec<u16>> {
        Ok(self.state.lock().await.wg_ports())
    }

    async fn machine_networks(&self, vm: &WorkloadId) -> Result<Vec<String>> {
        let st = self.state.lock().await;
        Ok(rules::machine_networks(&st, vm))
    }

    async fn private_ips(&self, twin: TwinId, network: &str) -> Result<Vec<Ipv4Addr>> {
        let st = self.state.lock().await;
        let id = NetId::new(twin, network);
        let mut v: Vec<Ipv4Addr> = st
            .ports
            .values()
            .filter(|p| matches!(&p.target, PortTarget::Private { netid, .. } if *netid == id))
            .filter_map(|p| p.ipv4.map(|n| n.addr()))
            .collect();
        v.sort();
        Ok(v)
    }

    async fn public_setup(&self) -> Result<Option<PublicSetup>> {
        let st = self.state.lock().await;
        Ok(st.node.as_ref().and_then(|n| n.public.clone()))
    }

    async fn public_ip(&self, ip_wl: &WorkloadId) -> Result<Option<Attachment>> {
        let st = self.state.lock().await;
        Ok(rules::public_port(&st, &self.names, ip_wl)
            .map(|p| rules::attachment(&self.names, &st, p)))
    }

    async fn public_ips(&self) -> Result<Vec<Ipv4Addr>> {
        let st = self.state.lock().await;
        let mut v: Vec<Ipv4Addr> = st
            .ports
            .values()
            .filter(|p| p.target == PortTarget::Public)
            .filter_map(|p| p.ipv4.map(|n| n.addr()))
            .collect();
        v.sort();
        Ok(v)
    }

    async fn interfaces(&self) -> Result<Vec<Interface>> {
        async fn collect(
            ns: Ns,
            label: String,
            only: Option<&'static str>,
        ) -> Result<Vec<Interface>> {
            netns::in_netns(&ns, move |h| async move {
                let mut addrs = link::all_addrs(&h).await?;
                let mut out = Vec::new();
                for l in link::list(&h).await? {
                    if l.name == "lo" || only.is_some_and(|o| o != l.name) {
                        continue;
                    }
                    out.push(Interface {
                        addrs: addrs.remove(&l.index).unwrap_or_default(),
                        mac: l.mac.as_ref().map(names::mac_string),
                        name: l.name,
                        namespace: label.clone(),
                    });
                }
                Ok(out)
            })
            .await
        }
        let mut out = collect(self.host(), "host".into(), None).await?;
        let public = self.names.public_ns();
        if netns::exists(&public) {
            out.extend(collect(Ns::Named(public.clone()), public, Some(inner::PUBLIC_IF)).await?);
        }
        Ok(out)
    }

    async fn wireguard_status(&self, twin: TwinId, network: &str) -> Result<WgStatus> {
        let rec = {
            let st = self.state.lock().await;
            st.network(twin, network)
                .cloned()
                .ok_or_else(|| NetworkError::NoNetwork {
                    twin,
                    name: network.to_string(),
                })?
        };
        let ns = Ns::Named(self.names.nr_ns(&rec.netid));
        let mut status = wireguard::status(&ns, &self.cfg.wg, &rec.wg_ifname).await?;
        status.public_key = wireguard::public_key(&rec.network.wireguard_private_key)?;
        Ok(status)
    }
}

/// Inside the resource: the gateway address on its LAN, its transit address towards ndmz and
/// the default route there; answers whether its WireGuard interface exists.
async fn nr_inside(rec: &NrRecord, nr: &Ns) -> Result<bool> {
    let subnet = rec.network.subnet;
    let gw = names::nr_gateway(subnet);
    let transit = names::slot_address(rec.slot);
    let wg_if = rec.wg_ifname.clone();
    netns::in_netns(nr, move |h| async move {
        link::set_addrs(
            &h,
            inner::NR_LAN,
            &[IpNet::V4(
                Ipv4Net::new(gw, subnet.prefix_len()).expect("valid"),
            )],
        )
        .await?;
        link::set_up(&h, inner::NR_LAN).await?;
        link::set_addrs(
            &h,
            inner::NR_DMZ,
            &[IpNet::V4(Ipv4Net::new(transit, 32).expect("valid"))],
        )
        .await?;
        link::set_up(&h, inner::NR_DMZ).await?;
        link::ensure_route(
            &h,
            inner::NR_DMZ,
            Route::dev(Ipv4Net::new(names::NDMZ_GATEWAY, 32).expect("valid")),
        )
        .await?;
        link::ensure_route(
            &h,
            inner::NR_DMZ,
            Route::via(Ipv4Net::default(), names::NDMZ_GATEWAY),
        )
        .await?;
        Ok(link::get(&h, &wg_if).await?.is_some())
    })
    .await
}

/// The WireGuard interface's address and routes: the whole network (from the gateway's
/// address) and any other space a peer carries (access peers); stale routes go.
async fn nr_wg_routes(rec: &NrRecord, nr: &Ns) -> Result<()> {
    let net = &rec.network;
    let subnet = net.subnet;
    let gw = names::nr_gateway(subnet);
    let wg_if = rec.wg_ifname.clone();
    let mut want: Vec<Route> = vec![Route::dev(net.ip_range).src(gw)];
    for p in &net.peers {
        for a in &p.allowed_ips {
            if let IpNet::V4(v4) = a.trunc()
                && !net.ip_range.contains(&v4)
                && !names::wg_space().contains(&v4)
                && !want.iter().any(|r| r.dest == v4)
            {
                want.push(Route::dev(v4));
            }
        }
    }
    netns::in_netns(nr, move |h| async move {
        link::set_addrs(&h, &wg_if, &[IpNet::V4(names::wg_address(subnet))]).await?;
        link::set_up(&h, &wg_if).await?;
        for stale in link::routes(&h, &wg_if).await? {
            if !want.iter().any(|r| r.dest == stale) {
                link::delete_route(&h, &wg_if, stale).await?;
            }
        }
        for r in want {
            link::ensure_route(&h, &wg_if, r).await?;
        }
        Ok(())
    })
    .await
}
