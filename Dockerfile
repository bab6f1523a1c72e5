# Mirrors `make build`: the BPF objects are committed, so no clang is needed.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN make build VERSION=${VERSION}

# The binary is static; nothing else is needed at run time.
FROM scratch
COPY --from=build /src/tcptrace /tcptrace
ENTRYPOINT ["/tcptrace"]
