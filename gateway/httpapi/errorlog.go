package httpapi

import (
	"context"
	"log"
	"log/slog"
	"strings"
)

// ErrorLog is an http.Server's ErrorLog that writes to logger (nil: nowhere). A failed TLS
// handshake is at debug level: anyone who scans the port causes one, and an operator does not
// want a line per scanner by default; the rest is at warn level. The lines hold the remote
// address and Go's error text, never a request's headers or body.
func ErrorLog(logger *slog.Logger) *log.Logger {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return log.New(serverErrors{logger}, "", 0)
}

type serverErrors struct{ log *slog.Logger }

func (w serverErrors) Write(p []byte) (int, error) {
	msg := strings.TrimSpace(string(p))
	level := slog.LevelWarn
	if strings.HasPrefix(msg, "http: TLS handshake error") {
		level = slog.LevelDebug
	}
	w.log.Log(context.Background(), level, "http server", "error", msg)
	return len(p), nil
}
