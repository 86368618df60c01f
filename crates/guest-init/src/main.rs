//! `guest-init`: PID 1 inside a zos container-mode VM. See [`zos_guest_init::init`].

fn main() {
    zos_guest_init::init::main()
}
