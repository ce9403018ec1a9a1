package postgres

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/puddle/v2"

	"github.com/omnigate/omnigate/builtin/fhir/internal/store"
)

// ErrClosed is returned by the calls made after Close.
var ErrClosed = errors.New("store closed")

// timeoutError is a call that ran out of StatementTimeout: it is both
// store.ErrUnavailable and context.DeadlineExceeded.
type timeoutError struct{ err error }

func (e *timeoutError) Error() string { return "statement timeout: " + e.err.Error() }

func (e *timeoutError) Unwrap() []error {
	return []error{store.ErrUnavailable, context.DeadlineExceeded, e.err}
}

// unavailableError is a connection that failed or could not be made.
type unavailableError struct{ err error }

func (e *unavailableError) Error() string { return store.ErrUnavailable.Error() + ": " + e.err.Error() }

func (e *unavailableError) Unwrap() []error { return []error{store.ErrUnavailable, e.err} }

// classify turns a database error into what the store returns. parent is
// the caller's context: when it is done, its error is returned (wrapping
// err), never ErrUnavailable, since the caller gave up.
func classify(parent context.Context, err error) error {
	if err == nil {
		return nil
	}
	var te *timeoutError
	var ue *unavailableError
	if errors.As(err, &te) || errors.As(err, &ue) || errors.Is(err, ErrClosed) {
		return err // classified already
	}
	if perr := parent.Err(); perr != nil {
		if errors.Is(err, perr) {
			return err
		}
		return &callerError{ctx: perr, err: err}
	}
	if errors.Is(err, puddle.ErrClosedPool) {
		return ErrClosed
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case pgErr.Code == "57014": // query_canceled: statement_timeout
			return &timeoutError{err}
		case strings.HasPrefix(pgErr.Code, "08"), // connection exception
			pgErr.Code == "57P01", // admin_shutdown
			pgErr.Code == "57P02", // crash_shutdown
			pgErr.Code == "57P03", // cannot_connect_now: starting or shutting down
			pgErr.Code == "57P05", // idle_session_timeout
			pgErr.Code == "25P03", // idle_in_transaction_session_timeout
			pgErr.Code == "53300", // too_many_connections
			pgErr.Code == "53400": // configuration_limit_exceeded
			return &unavailableError{err}
		}
		return err
	}
	if errors.Is(err, context.DeadlineExceeded) || pgconn.Timeout(err) {
		// The call's own deadline (StatementTimeout), not the caller's.
		return &timeoutError{err}
	}
	if connectionError(err) {
		return &unavailableError{err}
	}
	return err
}

// connectionError reports whether err is a failure to connect or a broken
// connection.
func connectionError(err error) bool {
	var ce *pgconn.ConnectError
	var ne net.Error
	switch {
	case errors.As(err, &ce), errors.As(err, &ne),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed),
		errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return true
	}
	// pgconn's "conn closed" (a connection that broke earlier in the call)
	// and the like are plain errors.
	msg := err.Error()
	return strings.Contains(msg, "conn closed") ||
		strings.Contains(msg, "failed to connect")
}

// callerError is a call abandoned because its caller's context ended.
type callerError struct {
	ctx error // context.Canceled or context.DeadlineExceeded
	err error
}

func (e *callerError) Error() string { return e.err.Error() }

func (e *callerError) Unwrap() []error { return []error{e.ctx, e.err} }
