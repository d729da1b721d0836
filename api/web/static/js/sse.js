// Server-sent events read from a fetch() Response (EventSource cannot POST a question).
// The text/event-stream format: an event ends at a blank line; `event:` names it ("message"
// if unnamed), its `data:` lines are joined with "\n"; a line starting with ":" is a comment;
// one space after the colon is dropped. Calls onEvent(name, data) for each event, in order.
export async function readEvents(response, onEvent) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let name = "message";
  let data = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return; // an event left without its blank line is incomplete: dropped
      buffer += value;
      // A "\r" at the very end may be half of a "\r\n" still on its way: keep it for later.
      const lines = buffer.split(/\r\n|\n|\r(?!$)/);
      buffer = lines.pop();
      for (const line of lines) {
        if (line === "") {
          if (data.length) onEvent(name, data.join("\n"));
          name = "message";
          data = [];
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let text = colon < 0 ? "" : line.slice(colon + 1);
        if (text.startsWith(" ")) text = text.slice(1);
        if (field === "event") name = text;
        else if (field === "data") data.push(text);
      }
    }
  } finally {
    reader.cancel().catch(() => {}); // also when onEvent threw: the stream is closed
  }
}
