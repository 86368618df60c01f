//! The devnet's node VMs (`zos devnet up --vm-nodes N`): the node image published on the devnet's
//! grid as a signed dev release, a `dnsmasq` on the devnet bridge answering their DHCP with the
//! grid's iPXE script, and one QEMU per node booting by network (see [`crate::vmnode`] for the
//! command lines, docs/devnet.md for the whole).

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use zos_client::GridClient;
use zos_client::release::{FlistSource, FlistSpec, Publish, ReleaseClient};
use zos_flist::hub::HubClient;
use zos_flist::{BlockStore, DirStore, Flist};
use zos_runtime::supervise;
use zos_types::boot::{GridUrl, chain_script, script_query};
use zos_types::registry::{AdmissionToken, NodeFilter};
use zos_types::release::{ReleaseKeys, RunMode, sha256_hex};

use crate::error::{DevnetError, Result};
use crate::netns;
use crate::process::{spawn_detached, wait_until};
use crate::state::{DevnetState, DevnetVm, VmBoot, VmOptions};
use crate::vmnode::{self, Dhcp, VmNode};

/// The runtime flists of the node image, in the order they stack (later over earlier).
pub const RUNTIME_FLISTS: [&str; 2] = ["zos-base", "zos"];
/// The node image's debug flist (`debug.fl`): published in the devnet's dev releases, mounted
/// only by VMs booted with `zos-debug`.
pub const DEBUG_FLIST: &str = "debug";

/// Writes the release keys the devnet's grid trusts for runmode dev: the one devnet release key.
pub fn write_release_keys(state: &mut DevnetState, key: &Path) -> Result<()> {
    let id = zos_client::keyfile::load_identity(key)?;
    let keys = ReleaseKeys {
        keys: vec![id.public_key()],
        threshold: 1,
    };
    let path = state.dir.join("release-keys.json");
    let json = serde_json::to_vec_pretty(&keys).expect("release keys serialize");
    std::fs::write(&path, json).map_err(DevnetError::io("writing", &path))?;
    state.release_keys = Some(path);
    Ok(())
}

/// Publishes the node image on the devnet's grid: the runtime flists' blocks and files on its
/// hub (as the farmer), the kernel and initramfs as boot files, and a dev release naming them,
/// signed with the devnet release key.
pub async fn publish_image(state: &DevnetState, opts: &VmOptions) -> Result<String> {
    publish_image_as(state, opts, None, None).await
}

/// Publishes the node image again as release `version` (by default the next patch), with
/// `extra` (a directory packed as one more runtime flist, stacked over the image's own: its
/// `usr` shadows theirs) when given. A live upgrade test publishes the same image under a new
/// version for a good release, and with a broken zosd on top for a bad one. Answers the
/// version published.
pub async fn publish_image_as(
    state: &DevnetState,
    opts: &VmOptions,
    version: Option<&str>,
    extra: Option<&Path>,
) -> Result<String> {
    let image = &opts.image;
    let farmer = state.farmer()?;
    let hub = HubClient::new(&state.grid_url)
        .map_err(DevnetError::hub("connecting to the hub of"))?
        .with_auth(farmer, state.farmer_twin);
    let remote: Arc<dyn BlockStore> = Arc::new(
        hub.block_store()
            .map_err(DevnetError::hub("opening the block store of"))?,
    );
    let local = DirStore::new(image.join("blocks"));
    let mut specs = Vec::new();
    for name in RUNTIME_FLISTS {
        let file = image.join(format!("{name}.fl"));
        specs.push(push_flist(&hub, &remote, &local, name, &file).await?);
    }
    if let Some(dir) = extra {
        specs.push(push_dir(state, &hub, &remote, dir, EXTRA_FLIST).await?);
    }
    // The debug flist (a console shell for VMs booted with zos-debug), when the image has one.
    let debug_file = image.join(format!("{DEBUG_FLIST}.fl"));
    let debug = match debug_file.is_file() {
        true => Some(push_flist(&hub, &remote, &local, DEBUG_FLIST, &debug_file).await?),
        false => None,
    };
    let key = zos_client::keyfile::load_identity(&opts.release_key)?;
    let published = ReleaseClient::new(&state.grid_url)?
        .publish(
            &Publish {
                runmode: RunMode::Dev,
                kernel: &image.join("vmlinuz"),
                initramfs: &image.join("initramfs.cpio.zst"),
                flists: &specs,
                debug: debug.as_ref(),
                keys: std::slice::from_ref(&key),
                version: version.map(str::to_string),
            },
            &|u| tracing::debug!(?u, "boot file"),
        )
        .await
        .map_err(|e| DevnetError::Publish(e.to_string()))?;
    Ok(published.version)
}

/// The name of the extra runtime flist of [`publish_image_as`].
pub const EXTRA_FLIST: &str = "zos-extra";

/// Where the devnet packs the flists it publishes (and the rest of what it publishes from:
/// [`crate::supervised::publish_runtime`]); removed with the devnet's data.
pub(crate) fn release_dir(state: &DevnetState) -> std::path::PathBuf {
    state.dir.join("release")
}

/// Packs `dir` straight into the hub's block store and pushes it as runtime flist `name`
/// (named by its SHA-256 on the hub, so each release keeps its own).
pub(crate) async fn push_dir(
    state: &DevnetState,
    hub: &HubClient,
    remote: &Arc<dyn BlockStore>,
    dir: &Path,
    name: &str,
) -> Result<FlistSpec> {
    use zos_flist::pack::{PackOptions, Source, pack};
    let work = release_dir(state);
    std::fs::create_dir_all(&work).map_err(DevnetError::io("creating", &work))?;
    let out = work.join(format!("{name}.fl"));
    pack(
        &Source::Dir(dir.to_path_buf()),
        &out,
        remote.clone(),
        &PackOptions::default(),
        &|_| {},
    )
    .await
    .map_err(|e| DevnetError::Image {
        path: dir.to_path_buf(),
        reason: format!("cannot pack it as a runtime flist: {e}"),
    })?;
    push_file(hub, name, &out, |sha| format!("node-{name}-{sha}.fl")).await
}

/// Pushes the flist file `file` to the hub under the name `hub_name` makes of its SHA-256; its
/// spec in a release as runtime flist `name`.
async fn push_file(
    hub: &HubClient,
    name: &str,
    file: &Path,
    hub_name: impl FnOnce(&str) -> String,
) -> Result<FlistSpec> {
    let bytes = std::fs::read(file).map_err(DevnetError::io("reading", file))?;
    let sha256 = sha256_hex(&bytes);
    hub.push(&hub_name(&sha256), bytes, true)
        .await
        .map_err(DevnetError::hub("pushing the node image's flists to"))?;
    Ok(FlistSpec {
        name: name.to_string(),
        source: FlistSource::Hub,
        sha256,
    })
}

/// Uploads the blocks the hub lacks of the image's flist `file` and pushes the flist.
async fn push_flist(
    hub: &HubClient,
    remote: &Arc<dyn BlockStore>,
    local: &DirStore,
    name: &str,
    file: &Path,
) -> Result<FlistSpec> {
    let flist = Flist::open(file).map_err(|e| DevnetError::Image {
        path: file.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut ids = Vec::new();
    let mut seen = HashSet::new();
    for (_, node) in flist.walk() {
        for b in &node.blocks {
            if seen.insert(b.id) {
                ids.push(b.id);
            }
        }
    }
    let missing = remote
        .missing(&ids)
        .await
        .map_err(DevnetError::hub("asking which blocks are on"))?;
    tracing::info!(
        flist = name,
        blocks = ids.len(),
        missing = missing.len(),
        "uploading"
    );
    futures::stream::iter(missing)
        .map(|id| async move {
            let data = local.get(&id).await?;
            remote.put(&id, &data).await
        })
        .buffer_unordered(8)
        .try_collect::<()>()
        .await
        .map_err(DevnetError::hub("uploading the node image's blocks to"))?;
    push_file(hub, name, file, |_| format!("node-{name}.fl")).await
}

/// The farmer's admission token the VMs boot with.
fn admission(state: &DevnetState) -> Result<AdmissionToken> {
    Ok(AdmissionToken::sign(
        &state.farmer()?,
        state.farm_id,
        zos_types::auth::unix_now() + 365 * 86_400,
    ))
}

/// The URL of the farm's iPXE script as the VMs reach it, with the farmer's admission token.
pub fn ipxe_url(state: &DevnetState) -> Result<String> {
    Ok(format!(
        "{}/boot/dev/farms/{}.ipxe{}",
        state.grid_node_url,
        state.farm_id,
        script_query(Some(&admission(state)?), &[])
    ))
}

/// The bootloader script of node VM `index`: what `zos farm bootloader --format ipxe` makes for
/// the devnet's farm, with the farmer's token and the VM's node arguments.
pub fn vm_chain_script(state: &DevnetState, opts: &VmOptions, index: usize) -> Result<String> {
    let grid = GridUrl::parse(&state.grid_node_url).map_err(|e| DevnetError::Image {
        path: state.dir.clone(),
        reason: e.to_string(),
    })?;
    Ok(chain_script(
        state.farm_id,
        RunMode::Dev,
        &grid,
        Some(&admission(state)?),
        &opts.args_of(index),
    ))
}

/// Starts the DHCP server of the node VMs on the devnet bridge. Each VM, known by its MAC, gets
/// `vmN.ipxe` from dnsmasq's TFTP: its bootloader script ([`vm_chain_script`]), which chains
/// the grid's script with the VM's node arguments (a DHCP boot file name holds at most 255
/// bytes, and the token alone takes 141).
pub fn start_dhcp(state: &mut DevnetState, opts: &VmOptions) -> Result<()> {
    let base = state
        .subnet
        .split_once('/')
        .map_or(state.subnet.as_str(), |(a, _)| a)
        .rsplit_once('.')
        .map_or("", |(a, _)| a)
        .to_string();
    let tftp = state.dir.join("tftp");
    std::fs::create_dir_all(&tftp).map_err(DevnetError::io("creating", &tftp))?;
    let mut hosts = Vec::new();
    for i in 1..=opts.count {
        let file = format!("vm{i}.ipxe");
        let path = tftp.join(&file);
        std::fs::write(&path, vm_chain_script(state, opts, i)?)
            .map_err(DevnetError::io("writing", &path))?;
        hosts.push((vmnode::node_mac(&state.name, i), file));
    }
    let dhcp = Dhcp {
        bridge: state.bridge.clone(),
        range: (format!("{base}.100"), format!("{base}.199")),
        ipxe_script: ipxe_url(state)?,
        hosts,
        tftp_root: tftp,
        server: format!("{base}.1"),
        pid_file: state.dir.join("dnsmasq.pid"),
        lease_file: state.dir.join("dnsmasq.leases"),
        log_file: state.dir.join("dnsmasq.log"),
    };
    let mut cmd = Command::new("dnsmasq");
    cmd.args(dhcp.dnsmasq_args());
    state.dnsmasq_pid = spawn_detached(cmd, &state.dir.join("dnsmasq.out"))?;
    Ok(())
}

/// Makes node VM `index` (1-based): its disks and tap, then starts it.
pub fn add_vm(state: &mut DevnetState, opts: &VmOptions, index: usize) -> Result<()> {
    let dir = state.dir.join(format!("vm{index}"));
    let disks = vmnode::make_disks(&dir, &opts.disks).map_err(DevnetError::io("creating", &dir))?;
    let vm = DevnetVm {
        index,
        name: format!("{}-vm{index}", state.name),
        tap: format!("{}v{index}", state.name),
        mac: vmnode::node_mac(&state.name, index),
        serial: dir.join("serial.log"),
        qmp: dir.join("qmp.sock"),
        dir,
        disks,
        memory_mib: opts.memory_mib,
        vcpus: opts.vcpus,
        iso: None,
        pid: 0,
        twin_id: None,
        node_id: None,
    };
    netns::add_tap(&vm.tap, &state.bridge)?;
    state.vms.push(vm);
    state.save()?;
    if opts.boot == VmBoot::Iso {
        use_iso(state, opts, index)?;
    }
    start_vm(state, index)
}

/// Where VM `index` is in `state.vms`.
fn vm_at(state: &DevnetState, index: usize) -> Result<usize> {
    state
        .vms
        .iter()
        .position(|v| v.index == index)
        .ok_or(DevnetError::NoNode(index))
}

/// Powers node VM `index` on (QEMU, booting by network).
pub fn start_vm(state: &mut DevnetState, index: usize) -> Result<()> {
    let at = vm_at(state, index)?;
    if state.vm_running(&state.vms[at]) {
        return Err(DevnetError::NodeRunning {
            index,
            pid: state.vms[at].pid,
        });
    }
    let vm = &state.vms[at];
    let _ = std::fs::remove_file(&vm.qmp);
    let spec = VmNode {
        name: vm.name.clone(),
        accel: vmnode::accel(),
        memory_mib: vm.memory_mib,
        vcpus: vm.vcpus,
        disks: vm.disks.clone(),
        tap: vm.tap.clone(),
        mac: vm.mac.clone(),
        serial: vm.serial.clone(),
        iso: vm.iso.clone(),
    };
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(spec.qemu_args())
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", vm.qmp.display()));
    let log = vm.dir.join("qemu.log");
    let pid = spawn_detached(cmd, &log)?;
    state.vms[at].pid = pid;
    state.save()
}

/// Presses node VM `index`'s power button and waits up to `grace` for it to power off, then
/// stops QEMU. Answers whether it powered off by itself.
pub fn power_off(state: &mut DevnetState, index: usize, grace: Duration) -> Result<bool> {
    let at = vm_at(state, index)?;
    let vm = state.vms[at].clone();
    if !state.vm_running(&vm) {
        return Ok(true);
    }
    let pressed = qmp(&vm.qmp, "system_powerdown").is_ok();
    let deadline = std::time::Instant::now() + grace;
    while pressed && state.vm_running(&vm) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let clean = !state.vm_running(&vm);
    supervise::stop_blocking(vm.pid, &state.vm_marker(&vm), Duration::from_secs(5));
    state.vms[at].pid = 0;
    state.save()?;
    Ok(clean)
}

/// Sends one QMP command to QEMU at `socket`.
fn qmp(socket: &Path, command: &str) -> std::io::Result<()> {
    use std::io::{BufRead, BufReader, Write};
    let s = std::os::unix::net::UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut w = s;
    let mut line = String::new();
    r.read_line(&mut line)?; // the greeting
    for c in ["qmp_capabilities", command] {
        writeln!(w, "{{\"execute\":\"{c}\"}}")?;
        // The answer, after any events QEMU sends meanwhile (POWERDOWN may come first).
        loop {
            line.clear();
            if r.read_line(&mut line)? == 0 {
                return Err(std::io::Error::other(format!(
                    "QMP {c}: QEMU closed the socket"
                )));
            }
            if line.contains("\"return\"") {
                break;
            }
            if line.contains("\"error\"") {
                return Err(std::io::Error::other(format!("QMP {c}: {}", line.trim())));
            }
        }
    }
    Ok(())
}

/// Types `text` on node VM `vm`'s serial console (what a debug shell reads; a node without
/// one ignores it). What the node answers shows in [`console`].
pub fn type_on_console(vm: &DevnetVm, text: &str) -> Result<()> {
    use std::io::Write;
    let socket = vmnode::console_socket(&vm.serial);
    let mut s = std::os::unix::net::UnixStream::connect(&socket)
        .map_err(DevnetError::io("connecting to the console", &socket))?;
    // Slowly, as a person types: the emulated UART takes a few bytes at a time.
    for chunk in text.as_bytes().chunks(4) {
        s.write_all(chunk)
            .map_err(DevnetError::io("typing on the console", &socket))?;
        std::thread::sleep(Duration::from_millis(50));
    }
    // Stay a moment so QEMU reads it all before the connection closes.
    std::thread::sleep(Duration::from_millis(500));
    Ok(())
}

/// Boots node VM `index` with `args` (beside the devnet's defaults) from its next power-on:
/// rewrites the bootloader script dnsmasq hands it.
pub fn set_vm_args(state: &DevnetState, opts: &VmOptions, index: usize) -> Result<()> {
    vm_at(state, index)?;
    let path = state.dir.join("tftp").join(format!("vm{index}.ipxe"));
    std::fs::write(&path, vm_chain_script(state, opts, index)?)
        .map_err(DevnetError::io("writing", &path))
}

/// Makes node VM `index` boot from the farm's bootloader ISO from its next power-on: the image
/// `zos farm bootloader --format iso` makes, with the VM's node arguments
/// ([`vm_chain_script`]), written to `<dir>/vm<index>/bootloader.iso`.
pub fn use_iso(state: &mut DevnetState, opts: &VmOptions, index: usize) -> Result<()> {
    let at = vm_at(state, index)?;
    let grid = GridUrl::parse(&state.grid_node_url).map_err(|e| DevnetError::Image {
        path: state.dir.clone(),
        reason: e.to_string(),
    })?;
    let iso = state.vms[at].dir.join("bootloader.iso");
    zos_client::bootloader::hybrid_image(
        &iso,
        &vm_chain_script(state, opts, index)?,
        state.farm_id,
        RunMode::Dev,
        &grid,
    )
    .map_err(|e| DevnetError::Image {
        path: iso.clone(),
        reason: format!("cannot make the bootloader ISO: {e}"),
    })?;
    state.vms[at].iso = Some(iso);
    state.save()
}

/// Makes node VM `index` boot by network again from its next power-on.
pub fn use_pxe(state: &mut DevnetState, index: usize) -> Result<()> {
    let at = vm_at(state, index)?;
    state.vms[at].iso = None;
    state.save()
}

/// The serial console of node VM `vm` as text, its colours left out.
pub fn console(vm: &DevnetVm) -> String {
    plain(&std::fs::read(&vm.serial).unwrap_or_default())
}

/// `raw` console output as text without its escape sequences (ESC `[` … final letter).
pub fn plain(raw: &[u8]) -> String {
    let raw = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for e in chars.by_ref() {
                if e.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Replaces node VM `index`'s disks by empty ones (it must be off): the next boot is a new node.
pub fn wipe_disks(state: &DevnetState, index: usize) -> Result<()> {
    let vm = &state.vms[vm_at(state, index)?];
    if state.vm_running(vm) {
        return Err(DevnetError::NodeRunning { index, pid: vm.pid });
    }
    for d in &vm.disks {
        let size = std::fs::metadata(d)
            .map_err(DevnetError::io("reading", d))?
            .len();
        std::fs::File::create(d)
            .and_then(|f| f.set_len(size))
            .map_err(DevnetError::io("wiping", d))?;
    }
    Ok(())
}

/// Whether a registered node is one of the devnet's VMs (by the MAC of one of its NICs).
pub fn vm_of<'a>(state: &'a DevnetState, node: &zos_types::registry::Node) -> Option<&'a DevnetVm> {
    state.vms.iter().find(|vm| {
        node.interfaces
            .iter()
            .any(|i| i.mac.eq_ignore_ascii_case(&vm.mac))
    })
}

/// Waits until every node VM is online and answers over the relay, and records their ids.
pub async fn wait_vms_online(state: &mut DevnetState, timeout: Duration) -> Result<()> {
    let client = GridClient::new(&state.grid_url)?;
    let farmer = state.farmer_client()?;
    let filter = NodeFilter {
        farm_id: Some(state.farm_id),
        online: Some(true),
        ..NodeFilter::default()
    };
    let want = state.vms.len();
    let snapshot = state.clone();
    let nodes = wait_until(timeout, Duration::from_secs(1), || {
        let (client, farmer, filter, snapshot) =
            (client.clone(), farmer.clone(), filter.clone(), &snapshot);
        async move {
            let nodes = client.list_nodes(&filter).await.ok()?;
            // A VM whose disks were wiped registers as a new node with the same MAC, while its
            // old record may still count as online: the newest registration is the VM's, and it
            // counts once it answers over the relay (a VM just powered on may not have
            // registered its new self yet).
            let mut vms: std::collections::BTreeMap<usize, zos_types::registry::Node> =
                Default::default();
            for n in nodes {
                let Some(vm) = vm_of(snapshot, &n) else {
                    continue;
                };
                let newer = vms
                    .get(&vm.index)
                    .is_none_or(|old| (n.created_at, n.id) > (old.created_at, old.id));
                if newer {
                    vms.insert(vm.index, n);
                }
            }
            if vms.len() < want {
                return None;
            }
            for n in vms.values() {
                farmer
                    .node(n.twin_id)
                    .call::<zos_types::node_api::Version>(&())
                    .await
                    .ok()?;
            }
            Some(vms)
        }
    })
    .await;
    let Some(nodes) = nodes else {
        return Err(DevnetError::VmsNotOnline {
            timeout,
            serials: state.vms.iter().map(|v| v.serial.clone()).collect(),
        });
    };
    for (index, node) in nodes {
        let at = vm_at(state, index)?;
        state.vms[at].twin_id = Some(node.twin_id);
        state.vms[at].node_id = Some(node.id);
    }
    state.save()
}

/// Stops node VM `vm`'s QEMU and removes its tap and disks.
pub(crate) fn remove_vm(state: &DevnetState, vm: &DevnetVm, problems: &mut Vec<String>) {
    if vm.pid > 0 {
        supervise::stop_blocking(vm.pid, &state.vm_marker(vm), Duration::from_secs(5));
    }
    if netns::link_exists(&vm.tap)
        && let Err(e) = netns::delete_link(&vm.tap)
    {
        problems.push(format!("tap {}: {e}", vm.tap));
    }
    for d in &vm.disks {
        let _ = std::fs::remove_file(d);
    }
}

/// Stops the devnet's dnsmasq.
pub(crate) fn stop_dhcp(state: &DevnetState) {
    if state.dnsmasq_pid > 0 {
        supervise::stop_blocking(
            state.dnsmasq_pid,
            &state.dnsmasq_marker(),
            Duration::from_secs(5),
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn consoles_lose_their_colours() {
        let raw = b"\x1b[2m2026\x1b[0m \x1b[32m INFO\x1b[0m network ready \x1b[3mbackend\x1b[0m\x1b[2m=\x1b[0mKernel";
        assert_eq!(super::plain(raw), "2026  INFO network ready backend=Kernel");
    }
}
