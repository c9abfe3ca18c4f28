//! `budgetctl`: a client for budgetd's admin socket. See [`budgetd::ctl`].

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = budgetd::ctl::Cli::parse();
    std::process::exit(budgetd::ctl::run(cli).await);
}
