package proxy

import "syscall"

const (
	syscallECONNREFUSED = syscall.ECONNREFUSED
	syscallECONNRESET   = syscall.ECONNRESET
)
