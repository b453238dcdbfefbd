//! PID 1 of the utility VM. Mounts, kernel modules, the data disk and the
//! agent's supervision arrive with the utility VM; until then this binary
//! only explains itself.

fn main() {
    eprintln!("distroctl-init: runs as PID 1 inside the utility VM; not usable on the host");
    std::process::exit(2);
}
