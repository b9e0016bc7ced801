//! `trackmeshctl`: see the library crate (`trackmesh_control`) and `trackmeshctl --help`.

fn main() {
    std::process::exit(trackmesh_control::main_with_args(std::env::args_os()));
}
