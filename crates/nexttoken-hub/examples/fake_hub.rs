//! Serves local checkpoint folders as Hub repos on 127.0.0.1, to try `--model NAME` offline:
//!
//! ```text
//! cargo run -p nexttoken-hub --features fake-hub --example fake_hub -- gpt2=models/nexttoken-tiny-shakespeare
//! HF_ENDPOINT=http://127.0.0.1:PORT nexttoken generate --model gpt2 "Hello"
//! ```

use std::path::Path;

fn main() {
    let hub = nexttoken_hub::fake::FakeHub::start();
    let mut repos = 0;
    for spec in std::env::args().skip(1) {
        let Some((repo, folder)) = spec.split_once('=') else {
            eprintln!("expected REPO=FOLDER, got `{spec}`");
            std::process::exit(2);
        };
        hub.add_folder(repo, Path::new(folder));
        repos += 1;
    }
    if repos == 0 {
        eprintln!("usage: fake_hub REPO=FOLDER...");
        std::process::exit(2);
    }
    println!("{}", hub.endpoint());
    loop {
        std::thread::park();
    }
}
