# A Shiny app for valve's tests: a text input, an output computed from it, and the pid of the
# worker serving the session (sessions are pinned to one worker).
library(shiny)

ui <- fluidPage(
  textInput("name", "Name", value = "world"),
  textOutput("greeting"),
  textOutput("pid")
)

server <- function(input, output, session) {
  output$greeting <- renderText(paste0("Hello, ", toupper(input$name), "!"))
  output$pid <- renderText(paste0("pid ", Sys.getpid()))
}

shinyApp(ui, server)
