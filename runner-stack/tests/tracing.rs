//! The tracing layer: one span per operation with provider, session,
//! operation and path or command id, and never contents, stdin or env values.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use runner_api::{
    RunnerCommandRequest, RunnerFileReadRequest, RunnerFileWriteRequest, bytes_stream,
};
use support::{Probe, destination};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// One span as recorded: its name and every field given a value.
#[derive(Debug, Clone, Default)]
struct SpanRecord {
    name: String,
    fields: BTreeMap<String, String>,
}

#[derive(Clone, Default)]
struct Recorder {
    spans: Arc<Mutex<BTreeMap<u64, SpanRecord>>>,
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
}

impl<S: tracing::Subscriber> Layer<S> for Recorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        let mut record = SpanRecord {
            name: attrs.metadata().name().to_string(),
            ..SpanRecord::default()
        };
        attrs.record(&mut Fields(&mut record.fields));
        self.spans.lock().unwrap().insert(id.into_u64(), record);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        if let Some(record) = self.spans.lock().unwrap().get_mut(&id.into_u64()) {
            values.record(&mut Fields(&mut record.fields));
        }
    }
}

impl Recorder {
    fn spans(&self) -> Vec<SpanRecord> {
        self.spans.lock().unwrap().values().cloned().collect()
    }

    fn operation(&self, operation: &str) -> Vec<SpanRecord> {
        self.spans()
            .into_iter()
            .filter(|s| s.name == runner_stack::SPAN_NAME)
            .filter(|s| s.fields.get("operation").map(String::as_str) == Some(operation))
            .collect()
    }
}

#[tokio::test]
async fn each_operation_has_one_span_with_names_and_no_contents() {
    let recorder = Recorder::default();
    let subscriber = tracing_subscriber::registry().with(recorder.clone());
    let _guard = tracing::subscriber::set_default(subscriber);

    let provider = runner_stack::stacked(Probe::default());
    let s = provider.create_session(destination("d")).await.unwrap();
    let session_id = s.state().session_id;
    s.write_file(RunnerFileWriteRequest::new(
        "notes/a.txt",
        b"file-contents-s3cr3t".to_vec(),
    ))
    .await
    .unwrap();
    s.write_file_stream(
        RunnerFileWriteRequest::new("b.txt", Vec::new()),
        bytes_stream(b"streamed-contents-s3cr3t".to_vec()),
    )
    .await
    .unwrap();
    s.read_file(RunnerFileReadRequest::new("notes/a.txt"))
        .await
        .unwrap();
    s.rename("b.txt".as_ref(), "c.txt".as_ref()).await.unwrap();
    let command = RunnerCommandRequest::shell("cmd-7", "echo argument-s3cr3t")
        .with_env("TOKEN", "env-value-s3cr3t");
    let failed = s.run_command(command).await.unwrap_err();
    let _ = s
        .write_stdin(&"cmd-7".to_string(), b"stdin-s3cr3t".to_vec(), true)
        .await;

    let writes = recorder.operation("write_file");
    assert_eq!(writes.len(), 1, "{:?}", recorder.spans());
    let fields = &writes[0].fields;
    assert_eq!(fields["provider"], "memory");
    assert_eq!(fields["session"], session_id);
    assert_eq!(fields["path"], "notes/a.txt");
    assert!(!fields.contains_key("error_kind"), "{fields:?}");
    assert_eq!(
        recorder.operation("write_file_stream")[0].fields["path"],
        "b.txt"
    );
    assert_eq!(
        recorder.operation("read_file")[0].fields["path"],
        "notes/a.txt"
    );
    let rename = &recorder.operation("rename")[0].fields;
    assert_eq!(
        (rename["path"].as_str(), rename["to"].as_str()),
        ("b.txt", "c.txt")
    );
    let run = &recorder.operation("run_command")[0].fields;
    assert_eq!(run["command_id"], "cmd-7");
    assert_eq!(run["error_kind"], failed.kind().as_str());
    // Refused by the correctness layer, outside the tracing layer: no span.
    assert!(recorder.operation("write_stdin").is_empty());
    s.close().await.unwrap();
    assert_eq!(recorder.operation("close").len(), 1);

    for span in recorder.spans() {
        for (name, value) in &span.fields {
            assert!(
                !value.contains("s3cr3t"),
                "span {} field {name} = {value:?} leaks a content",
                span.name
            );
        }
    }
}
