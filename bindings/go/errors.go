package valve

/*
#include <valve/valve.h>
*/
import "C"

import (
	"syscall"
)

// Error is a failure reported by libvalve: its negative error code, the code's symbolic name
// ("VALVE_EINVALID", "EADDRINUSE") and the detailed message valve gave.
//
// errors.Is(err, ErrInvalid) and the other sentinels compare codes; libuv's codes (negative errno
// values) also match their syscall.Errno, as in errors.Is(err, syscall.EADDRINUSE).
type Error struct {
	Code    int
	Name    string
	Message string
}

func (e *Error) Error() string {
	return "valve: " + e.Message + " (" + e.Name + ")"
}

// Is reports whether target is an *Error with the same code, or the syscall.Errno of a libuv code.
func (e *Error) Is(target error) bool {
	switch t := target.(type) {
	case *Error:
		return t.Code == e.Code
	case syscall.Errno:
		// libuv passes errno values through negated; its own codes (UV_EOF, UV_EAI_*) lie beyond.
		return e.Code < 0 && e.Code > -3000 && syscall.Errno(-e.Code) == t
	}
	return false
}

// The codes of valve's own errors, for errors.Is.
var (
	ErrInvalid  = codeError(C.VALVE_EINVALID, "")  // invalid argument or configuration value
	ErrState    = codeError(C.VALVE_ESTATE, "")    // not allowed in the server's current state
	ErrStartup  = codeError(C.VALVE_ESTARTUP, "")  // no worker became ready
	ErrNoMem    = codeError(C.VALVE_ENOMEM, "")    // out of memory
	ErrInternal = codeError(C.VALVE_EINTERNAL, "") // internal error
	ErrConfig   = codeError(C.VALVE_ECONFIG, "")   // R or plumber missing
)

// codeError builds an *Error for rc; an empty message stands for valve_strerror(rc).
func codeError(rc C.int, message string) *Error {
	if message == "" {
		message = C.GoString(C.valve_strerror(rc))
	}
	return &Error{Code: int(rc), Name: C.GoString(C.valve_err_name(rc)), Message: message}
}
