/* A process with known bytes in memory, dumped with gcore by test_artifacts.py.
 * Prints the addresses of its marker, its word table and a heap buffer, then waits. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

char marker[] = "vmemfs-artifact-marker: 0123456789abcdef";
long words[4] = {0x1122334455667788L, -2L, 0, 0};

int main(void)
{
    size_t size = 1 << 20;
    unsigned char *heap = malloc(size);
    if (heap == NULL)
        return 1;
    for (size_t i = 0; i < size; i++)
        heap[i] = (unsigned char)(i * 7 + 3);
    words[2] = (long)marker;
    words[3] = (long)heap;
    printf("%p %p %p\n", (void *)marker, (void *)words, (void *)heap);
    fflush(stdout);
    for (;;)
        pause();
}
