// The admin interface's live page, served at GET /.
#pragma once

namespace valve {

// One self-contained HTML document (inline CSS and JS, nothing fetched from elsewhere) that polls
// the relative URL `status` every second, so it works under any path prefix. Static storage.
const char *admin_page_html();

}  // namespace valve
