module valve.dev/valve

go 1.19
