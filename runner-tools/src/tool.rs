//! The tool catalogue: names, descriptions and input schemas.

use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value};

use crate::input::{
    CancelCommandInput, CommandOutputInput, DestinationInput, DestinationsListInput,
    ExposePortInput, ListDirInput, ReadFileInput, RunCommandInput, WriteFileInput, WriteStdinInput,
};
use crate::interactive::{
    TerminalReadInput, TerminalResizeInput, TerminalSendInput, TerminalStartInput, WatchInput,
};

/// One of the tools a [`ToolSet`](crate::ToolSet) serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tool {
    /// `destinations_list`
    DestinationsList,
    /// `run_command`
    RunCommand,
    /// `command_output`
    CommandOutput,
    /// `write_stdin`
    WriteStdin,
    /// `cancel_command`
    CancelCommand,
    /// `list_commands`
    ListCommands,
    /// `read_file`
    ReadFile,
    /// `write_file`
    WriteFile,
    /// `list_dir`
    ListDir,
    /// `expose_port`
    ExposePort,
    /// `snapshot`
    Snapshot,
    /// `terminal_start`
    TerminalStart,
    /// `terminal_send`
    TerminalSend,
    /// `terminal_read`
    TerminalRead,
    /// `terminal_resize`
    TerminalResize,
    /// `watch`
    Watch,
}

/// A tool as a framework registers it: name, description, JSON schema of its input.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ToolSpec {
    /// The tool's name (`run_command`).
    pub name: &'static str,
    /// What the tool does, written for a model.
    pub description: &'static str,
    /// JSON Schema (draft 2020-12) of the tool's arguments, an object schema.
    pub input_schema: Map<String, Value>,
}

impl Tool {
    /// Every tool, in the order they are listed.
    pub const ALL: [Tool; 16] = [
        Tool::DestinationsList,
        Tool::RunCommand,
        Tool::CommandOutput,
        Tool::WriteStdin,
        Tool::CancelCommand,
        Tool::ListCommands,
        Tool::ReadFile,
        Tool::WriteFile,
        Tool::ListDir,
        Tool::ExposePort,
        Tool::Snapshot,
        Tool::TerminalStart,
        Tool::TerminalSend,
        Tool::TerminalRead,
        Tool::TerminalResize,
        Tool::Watch,
    ];

    /// The tool's name.
    pub fn name(self) -> &'static str {
        match self {
            Tool::DestinationsList => "destinations_list",
            Tool::RunCommand => "run_command",
            Tool::CommandOutput => "command_output",
            Tool::WriteStdin => "write_stdin",
            Tool::CancelCommand => "cancel_command",
            Tool::ListCommands => "list_commands",
            Tool::ReadFile => "read_file",
            Tool::WriteFile => "write_file",
            Tool::ListDir => "list_dir",
            Tool::ExposePort => "expose_port",
            Tool::Snapshot => "snapshot",
            Tool::TerminalStart => "terminal_start",
            Tool::TerminalSend => "terminal_send",
            Tool::TerminalRead => "terminal_read",
            Tool::TerminalResize => "terminal_resize",
            Tool::Watch => "watch",
        }
    }

    /// The tool called `name`, if there is one.
    pub fn from_name(name: &str) -> Option<Tool> {
        Tool::ALL.into_iter().find(|tool| tool.name() == name)
    }

    /// What the tool does, written for a model.
    pub fn description(self) -> &'static str {
        match self {
            Tool::DestinationsList => {
                "List the runner destinations this server serves (id, provider, workspace root, \
                 capabilities). Pass an id as `destination` to the other tools; it may be omitted \
                 when there is only one."
            }
            Tool::RunCommand => {
                "Run a command in the destination's workspace. Give `command` (a shell script, run \
                 with sh -c) or `program` with `args`. Foreground commands return exit_code, \
                 signal, timed_out, duration_ms and stdout/stderr (long output keeps its head and \
                 tail with a note of the bytes omitted, and lines longer than max_line_bytes, \
                 default 2048, are cut with a note); they are killed after timeout_ms \
                 (default 120000). stdin is text, or any bytes with stdin_encoding base64. \
                 With run_in_background the call returns at once with the command_id: poll it \
                 with command_output and stop it with cancel_command; keep_stdin_open lets \
                 write_stdin feed it. user runs the command as another user where the \
                 destination allows it."
            }
            Tool::CommandOutput => {
                "Output of a command after a sequence number: pass after_seq 0 first, then the \
                 next_after_seq of the previous call. Returns new stdout/stderr, state (running \
                 or exited) and, once exited, the exit status. wait_ms waits for new output or \
                 the exit. Long output and long lines are shortened as in run_command."
            }
            Tool::WriteStdin => {
                "Write data (text, or any bytes with encoding base64; at most 16 MiB a call) \
                 to the stdin of a background command started with keep_stdin_open; close \
                 ends its input. Returns once the bytes are written to the pipe."
            }
            Tool::CancelCommand => {
                "Kill a running command and its whole process tree. Returns whether a running \
                 command was cancelled."
            }
            Tool::ListCommands => {
                "List the commands of the destination's session with their state, start time \
                 and output counters."
            }
            Tool::ReadFile => {
                "Read a file of the workspace (or a read root). offset and limit select a \
                 byte range (default limit 262144); next_offset says where to continue. \
                 encoding base64 returns binary files exactly (default utf-8 text)."
            }
            Tool::WriteFile => {
                "Write a whole file in the workspace atomically, creating parent \
                 directories. Paths outside the workspace are refused. encoding base64 \
                 writes binary content (default utf-8 text). Large files go in chunks of at \
                 most 16 MiB: offset 0 for the first, then each result's next_offset, and \
                 complete true on the last; the file changes only when the last chunk \
                 arrives, all at once."
            }
            Tool::ListDir => {
                "List a directory of the workspace (default: its root): name, kind, size, mode \
                 and modification time of each entry."
            }
            Tool::ExposePort => {
                "Make a port of the runner reachable from this machine and return its URL."
            }
            Tool::Snapshot => {
                "Capture the destination's workspace and return the snapshot's id \
                 (destination, provider_id, snapshot_id)."
            }
            Tool::TerminalStart => {
                "Start a program on a pseudo-terminal (for REPLs, editors, pagers, installers and \
                 anything that insists on a terminal): `command` runs with sh -c, default an \
                 interactive shell. rows and cols give its size (default 24x80). Returns the \
                 command_id for terminal_send, terminal_read, terminal_resize and \
                 cancel_command."
            }
            Tool::TerminalSend => {
                "Send keys to a terminal as typed: end a line with \\r (Enter); \\u0003 is \
                 Ctrl-C, \\u0004 Ctrl-D, \\u001b Escape (arrow keys: \\u001b[A up, \\u001b[B \
                 down). encoding base64 sends any bytes."
            }
            Tool::TerminalRead => {
                "Read a terminal's screen as it looks now (text, one line per row, and the \
                 cursor position), rendered by a terminal emulator. Pass the previous \
                 next_after_seq as after_seq: changed says whether output arrived since, and \
                 wait_ms waits for some. state and status say whether the program exited."
            }
            Tool::TerminalResize => {
                "Change a terminal's size; the program is told (SIGWINCH) and redraws."
            }
            Tool::Watch => {
                "Follow file changes in the workspace without polling list_dir. Without a \
                 cursor it starts watching `path` (default the workspace root, recursive by \
                 default) and returns a cursor; with a cursor it returns the events since \
                 then (created, modified, removed, renamed; paths relative to the workspace) \
                 and the next cursor. wait_ms waits for an event. overflow true means events \
                 were lost: list the directory again. stop ends the watch."
            }
        }
    }

    /// JSON Schema (draft 2020-12) of the tool's arguments, derived from its input type.
    pub fn input_schema(self) -> Map<String, Value> {
        match self {
            Tool::DestinationsList => schema_of::<DestinationsListInput>(),
            Tool::RunCommand => schema_of::<RunCommandInput>(),
            Tool::CommandOutput => schema_of::<CommandOutputInput>(),
            Tool::WriteStdin => schema_of::<WriteStdinInput>(),
            Tool::CancelCommand => schema_of::<CancelCommandInput>(),
            Tool::ListCommands | Tool::Snapshot => schema_of::<DestinationInput>(),
            Tool::ReadFile => schema_of::<ReadFileInput>(),
            Tool::WriteFile => schema_of::<WriteFileInput>(),
            Tool::ListDir => schema_of::<ListDirInput>(),
            Tool::ExposePort => schema_of::<ExposePortInput>(),
            Tool::TerminalStart => schema_of::<TerminalStartInput>(),
            Tool::TerminalSend => schema_of::<TerminalSendInput>(),
            Tool::TerminalRead => schema_of::<TerminalReadInput>(),
            Tool::TerminalResize => schema_of::<TerminalResizeInput>(),
            Tool::Watch => schema_of::<WatchInput>(),
        }
    }

    /// Name, description and input schema together.
    pub fn spec(self) -> ToolSpec {
        ToolSpec {
            name: self.name(),
            description: self.description(),
            input_schema: self.input_schema(),
        }
    }
}

/// Every tool's spec, in listing order.
pub fn tool_specs() -> Vec<ToolSpec> {
    Tool::ALL.into_iter().map(Tool::spec).collect()
}

fn schema_of<T: JsonSchema>() -> Map<String, Value> {
    let schema = SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<T>();
    let mut map = match schema.to_value() {
        Value::Object(map) => map,
        // A struct's schema is always an object; keep the contract regardless.
        _ => Map::from_iter([("type".to_string(), Value::String("object".into()))]),
    };
    // Some function-calling clients insist on `properties`, even when empty.
    map.entry("properties")
        .or_insert_with(|| Value::Object(Map::new()));
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_is_an_object_schema_with_its_fields() {
        for tool in Tool::ALL {
            let schema = tool.input_schema();
            assert_eq!(schema.get("type"), Some(&Value::from("object")), "{tool:?}");
            assert!(schema["properties"].is_object(), "{tool:?}");
            assert_eq!(Tool::from_name(tool.name()), Some(tool));
        }
        let run = Tool::RunCommand.input_schema();
        let props = run["properties"].as_object().expect("properties");
        for field in [
            "command",
            "timeout_ms",
            "cwd",
            "env",
            "run_in_background",
            "max_line_bytes",
            "stdin_encoding",
            "keep_stdin_open",
            "user",
        ] {
            assert!(props.contains_key(field), "run_command lacks {field}");
        }
        let output = Tool::CommandOutput.input_schema();
        let description = output["properties"]["max_line_bytes"]["description"]
            .as_str()
            .expect("max_line_bytes is described");
        assert!(description.contains("default 2048"), "{description}");
        // Flattened from RunnerFileReadRequest: the API's own fields and docs.
        let read = Tool::ReadFile.input_schema();
        assert_eq!(read["required"], serde_json::json!(["path"]));
        assert!(read["properties"]["offset"].is_object());
    }
}
