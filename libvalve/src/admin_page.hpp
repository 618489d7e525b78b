// The admin interface's live page, served at GET /.
#pragma once

namespace valve {

// One self-contained HTML document (inline CSS and JS, nothing fetched from elsewhere) that polls
// the relative URL `status` every second, so it works under any path prefix. Static storage.
// Everything from status reaches the page through textContent, attributes or numbers, never as
// markup: a worker's output or an error message cannot inject anything. The document is admin.html,
// which the build compiles in (embed_binary.py --text): the definition is generated.
const char *admin_page_html();

}  // namespace valve
