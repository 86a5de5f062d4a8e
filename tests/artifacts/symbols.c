/* A program with symbols of several kinds, for the symbol-table tests (build_symbols.py).
 * Prints the run-time addresses of its marker, its word table and main, then waits
 * until its standard input is closed. */
#include <stdio.h>
#include <unistd.h>

char symbols_marker[] = "vmemfs-symbols-marker: fedcba9876543210";
long symbols_words[2] = {0x0102030405060708L, -3L};
const char symbols_rodata[] = "read-only text";
int symbols_bss;
__thread int symbols_tls = 5;
static int symbols_static_counter = 7;

__attribute__((weak)) int symbols_weak(void)
{
    return 1;
}

static int symbols_local_function(int x)
{
    return x * symbols_static_counter + symbols_tls + symbols_bss;
}

int main(void)
{
    char byte;
    printf("%p %p %p\n", (void *)symbols_marker, (void *)symbols_words, (void *)main);
    fflush(stdout);
    while (read(0, &byte, 1) > 0)
        ;
    return symbols_local_function(0) + symbols_weak() + symbols_rodata[0] - 5 - 1 - 'r';
}
