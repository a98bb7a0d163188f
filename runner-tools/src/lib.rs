#![doc = include_str!("../README.md")]

mod config;
mod input;
mod interactive;
mod lines;
mod output;
mod tool;
mod toolset;
mod upload;

pub use config::{ToolDestination, ToolsConfig};
pub use input::{
    CancelCommandInput, CommandOutputInput, ContentEncoding, DEFAULT_FOREGROUND_TIMEOUT_MS,
    DEFAULT_READ_LIMIT, DestinationInput, DestinationsListInput, ExposePortInput, ListDirInput,
    MAX_CHUNK_BYTES, ReadFileInput, RunCommandInput, WriteFileInput, WriteStdinInput,
};
pub use interactive::{
    DEFAULT_TERMINAL_COLS, DEFAULT_TERMINAL_ROWS, MAX_WATCH_EVENTS_PER_CALL, TerminalReadInput,
    TerminalResizeInput, TerminalResized, TerminalScreen, TerminalSendInput, TerminalSent,
    TerminalStartInput, TerminalStarted, WatchEvents, WatchInput,
};
pub use lines::{DEFAULT_MAX_LINE_BYTES, LineCut};
pub use output::{
    BackgroundStarted, CancelResult, CommandList, CommandOutputView, DestinationSummary,
    DestinationsList, DirListing, FileContent, ForegroundResult, SnapshotTaken, StdinWritten,
    ToolError, WriteResult,
};
pub use tool::{Tool, ToolSpec, tool_specs};
pub use toolset::{MAX_ARGUMENT_DEPTH, MAX_WAIT_MS, ToolSet};
