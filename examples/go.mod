module valve.dev/examples

go 1.19

require valve.dev/valve v0.0.0

replace valve.dev/valve => ../bindings/go
