//! `zos-init`: PID 1 of the zos node OS. See [`zos_init`].

fn main() {
    zos_init::boot::main()
}
