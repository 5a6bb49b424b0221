//! `pivot-sim`: run emulated hardware from the command line.
fn main() {
    eprintln!("pivot-sim: being written");
    std::process::exit(2);
}
