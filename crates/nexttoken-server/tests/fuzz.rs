//! Thousands of random and mutated bodies against the real server and its real engine: every
//! answer is a well-formed one (a completion, a stream, or OpenAI's error object), never a 500
//! or a panic, and afterwards the server still answers `/health` and a valid request correctly.

use std::io::Read;
use std::ops::ControlFlow;
use std::path::Path;

use burn::tensor::Device;
use nexttoken_generate::TextGenerator;
use nexttoken_model::Checkpoint;
use nexttoken_server::{ServerOptions, serve};
use serde_json::{Map, Value, json};

/// Bodies tried: the closing note of issue 31 quotes this count.
const BODIES: usize = 3000;
const CLIENTS: usize = 4;

fn generator() -> TextGenerator {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-trained");
    let mut checkpoint = Checkpoint::open(path).expect("the tiny-trained fixture");
    let config = checkpoint.config().clone();
    TextGenerator::new(checkpoint.load(&Device::flex()).unwrap(), config).unwrap()
}

/// xorshift64*: a fixed stream of cases, so that a failure repeats.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const FIELDS: [&str; 26] = [
    "model",
    "prompt",
    "max_tokens",
    "temperature",
    "top_p",
    "n",
    "seed",
    "stop",
    "stream",
    "stream_options",
    "logprobs",
    "echo",
    "presence_penalty",
    "frequency_penalty",
    "best_of",
    "logit_bias",
    "suffix",
    "top_k",
    "min_p",
    "repeat_penalty",
    "repetition_penalty",
    "min_tokens",
    "ignore_eos",
    "stop_token_ids",
    "user",
    "unknown_field",
];

/// A value of any JSON type, numbers at their extremes and nesting up to `depth`.
fn any_value(rng: &mut Rng, depth: usize) -> Value {
    let kinds = if depth == 0 { 6 } else { 8 };
    match rng.below(kinds) {
        0 => Value::Null,
        1 => Value::Bool(rng.below(2) == 0),
        2 => json!(*rng.pick(&[
            0i64,
            1,
            -1,
            2,
            3,
            16,
            63,
            64,
            65,
            1000,
            50256,
            50257,
            i64::MAX,
            i64::MIN,
            4_294_967_295,
            4_294_967_296
        ])),
        3 => json!(*rng.pick(&[
            0.0f64,
            -0.0,
            0.5,
            1.0,
            1.5,
            2.0,
            -2.5,
            1e-40,
            1e-5,
            1e30,
            -1e30,
            f64::MAX,
            f64::MIN
        ])),
        4 => json!(u64::MAX - rng.below(3) as u64),
        5 => Value::String(
            rng.pick(&[
                "",
                "Hi",
                "Every effort moves you",
                "<|endoftext|>",
                "Ünïcödé 🦀 text",
                "\u{0}\u{7f}",
                "tiny-trained",
                "50256",
            ])
            .repeat(1 + rng.below(3) * rng.below(200)),
        ),
        6 => Value::Array(
            (0..rng.below(5))
                .map(|_| any_value(rng, depth - 1))
                .collect(),
        ),
        _ => {
            let mut object = Map::new();
            for _ in 0..rng.below(4) {
                object.insert(rng.pick(&FIELDS).to_string(), any_value(rng, depth - 1));
            }
            Value::Object(object)
        }
    }
}

/// A value `field` may well take: the engine runs with many settings together.
fn plausible(rng: &mut Rng, field: &str) -> Value {
    match field {
        "prompt" => json!(*rng.pick(&[
            json!("Hi"),
            json!(["The", "Hello, I am"]),
            json!([464, 3290]),
            json!([[464], [15496, 11]]),
            json!("<|endoftext|>🦀"),
        ])),
        "max_tokens" => json!(rng.below(12)),
        "temperature" => json!(*rng.pick(&[0.0, 1e-40, 0.3, 1.0, 1.7])),
        "top_p" => json!(*rng.pick(&[0.05, 0.5, 0.95, 1.0])),
        "top_k" => json!(*rng.pick(&[1, 5, 50, 100_000])),
        "min_p" => json!(*rng.pick(&[0.0, 0.05, 0.9, 1.0])),
        "n" => json!(1 + rng.below(2)),
        "seed" => json!(rng.next() >> 1),
        "stop" => json!(*rng.pick(&[json!("\n"), json!(["e", " the"]), json!([])])),
        "stream" | "echo" | "ignore_eos" => json!(rng.below(2) == 0),
        "stream_options" => json!({"include_usage": rng.below(2) == 0}),
        "logprobs" => json!(rng.below(6)),
        "presence_penalty" | "frequency_penalty" => json!(*rng.pick(&[-2.0, -0.5, 0.0, 1.2, 2.0])),
        "repeat_penalty" | "repetition_penalty" => json!(*rng.pick(&[0.5, 1.0, 1.3])),
        "logit_bias" => json!({"13": -100, "262": 5.5}),
        "min_tokens" => json!(rng.below(4)),
        "stop_token_ids" => json!([13, 50256]),
        _ => any_value(rng, 2),
    }
}

/// A valid request, then a few of its fields set to plausible values or to anything.
fn mutated_request(rng: &mut Rng) -> Value {
    let mut request = json!({
        "model": "tiny-trained", "prompt": "Every effort moves you",
        "max_tokens": 1 + rng.below(8), "temperature": 0
    });
    for _ in 0..1 + rng.below(4) {
        let field = *rng.pick(&FIELDS);
        let value = if rng.below(3) == 0 {
            any_value(rng, 3)
        } else {
            plausible(rng, field)
        };
        request[field] = value;
    }
    request
}

/// A body as bytes: random JSON, a mutated valid request, broken JSON, deep nesting.
fn body(rng: &mut Rng) -> Vec<u8> {
    match rng.below(10) {
        0 => any_value(rng, 4).to_string().into_bytes(),
        1 => {
            let depth = *rng.pick(&[100, 129, 1000, 20_000]);
            let nested = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
            format!("{{\"prompt\": {nested}, \"max_tokens\": 2}}").into_bytes()
        }
        2 | 3 => {
            let mut bytes = mutated_request(rng).to_string().into_bytes();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(bytes.len());
                match rng.below(3) {
                    0 => bytes[at] = rng.next() as u8,
                    1 => bytes.truncate(at),
                    _ => bytes.insert(at, *rng.pick(b"{}[]\",:0\\\x00\xff")),
                }
                if bytes.is_empty() {
                    break;
                }
            }
            bytes
        }
        _ => mutated_request(rng).to_string().into_bytes(),
    }
}

/// Sends `body`; checks that the answer is well-formed whatever it was.
fn check(url: &str, body: &[u8]) -> u16 {
    let shown = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
    let response = match ureq::post(url)
        .set("Content-Type", "application/json")
        .send_bytes(body)
    {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(e) => panic!("{shown}: no answer: {e}"),
    };
    let status = response.status();
    assert!(status < 500, "{shown}: status {status}");
    let streamed = response.content_type().starts_with("text/event-stream");
    let mut text = String::new();
    response.into_reader().read_to_string(&mut text).unwrap();
    if streamed {
        let data: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .collect();
        assert_eq!(data.last(), Some(&"[DONE]"), "{shown}: {text}");
        for chunk in &data[..data.len() - 1] {
            let chunk: Value =
                serde_json::from_str(chunk).unwrap_or_else(|e| panic!("{e}: {chunk}"));
            assert!(chunk.get("error").is_none(), "{shown}: {chunk}");
        }
        return status;
    }
    let answer: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{shown}: {e}: {text}"));
    if status == 200 {
        assert_eq!(answer["object"], "text_completion", "{shown}: {answer}");
        for choice in answer["choices"].as_array().unwrap() {
            assert!(choice["finish_reason"].is_string(), "{shown}: {answer}");
        }
    } else {
        let error = &answer["error"];
        assert!(error["message"].is_string(), "{shown}: {answer}");
        assert!(error["type"].is_string(), "{shown}: {answer}");
    }
    status
}

#[test]
fn random_bodies_never_break_the_server() {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (bound, address) = std::sync::mpsc::channel();
    let options = ServerOptions {
        max_batch: 4,
        max_queue: 64,
        ..ServerOptions::new("tiny-trained")
    };
    let server = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            bound.send(listener.local_addr().unwrap()).unwrap();
            serve(listener, generator(), options, async {
                let _ = stopped.await;
            })
            .await
        })
    });
    let address = address.recv().unwrap();
    let url = format!("http://{address}/v1/completions");

    let statuses: Vec<Vec<u16>> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|client| {
                let url = &url;
                scope.spawn(move || {
                    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (client as u64 + 1));
                    (0..BODIES / CLIENTS)
                        .map(|_| check(url, &body(&mut rng)))
                        .collect()
                })
            })
            .collect();
        clients.into_iter().map(|c| c.join().unwrap()).collect()
    });
    let statuses: Vec<u16> = statuses.concat();
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    eprintln!(
        "{} bodies: {ok} answered 200, {} refused with an error object",
        statuses.len(),
        statuses.len() - ok
    );
    assert_eq!(statuses.len(), BODIES);
    // Both kinds of answer were exercised: the cases are not all refused at the parser.
    assert!(ok > BODIES / 4, "only {ok} of {BODIES} ran");

    let health = ureq::get(&format!("http://{address}/health"))
        .call()
        .unwrap();
    assert_eq!(health.status(), 200);
    let generator = generator();
    let (completions, _) = generator
        .session()
        .generate(
            &["Every effort moves you"],
            &generator.generation_config(12),
            &[],
            |_, _| ControlFlow::Continue(()),
            |_| ControlFlow::Continue(()),
        )
        .unwrap();
    let body = json!({"prompt": "Every effort moves you", "max_tokens": 12, "temperature": 0});
    let answer = ureq::post(&url).send_string(&body.to_string()).unwrap();
    let answer: Value = serde_json::from_str(&answer.into_string().unwrap()).unwrap();
    assert_eq!(answer["choices"][0]["text"], completions[0].text);
    let _ = stop.send(());
    server.join().unwrap().unwrap();
}
