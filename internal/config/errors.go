package config

import (
	"errors"
	"fmt"
	"strings"
)

// Error is one problem in infra.toml, with where it is.
type Error struct {
	File string
	Pos  Pos
	Msg  string
}

func (e *Error) Error() string {
	line, col := e.Pos.Line, e.Pos.Col
	if line == 0 {
		line, col = 1, 1
	}
	return fmt.Sprintf("%s:%d:%d: %s", e.File, line, col, e.Msg)
}

// ErrorList is every problem found in one file, in file order.
type ErrorList []*Error

func (l ErrorList) Error() string {
	var b strings.Builder
	for i, e := range l {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(e.Error())
	}
	return b.String()
}

func withFile(err error, file string) *Error {
	var e *Error
	if errors.As(err, &e) {
		e.File = file
		return e
	}
	return &Error{File: file, Msg: err.Error()}
}
