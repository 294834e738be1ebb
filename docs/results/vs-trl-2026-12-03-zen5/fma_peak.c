/* Peak FMA rate of one core, AVX2 against AVX-512: gcc -O3 -fopenmp -o fma fma_peak.c && ./fma (24 chains each) */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
__attribute__((target("avx2,fma"))) float f256(long n){__m256 a[24];for(int i=0;i<24;i++)a[i]=_mm256_set1_ps(i*1e-3f);__m256 b=_mm256_set1_ps(0.999f),c=_mm256_set1_ps(1e-4f);
for(long k=0;k<n;k++){for(int i=0;i<24;i++)a[i]=_mm256_fmadd_ps(a[i],b,c);} __m256 s=a[0];for(int i=1;i<24;i++)s=_mm256_add_ps(s,a[i]);float o[8];_mm256_storeu_ps(o,s);return o[0];}
__attribute__((target("avx512f"))) float f512(long n){__m512 a[24];for(int i=0;i<24;i++)a[i]=_mm512_set1_ps(i*1e-3f);__m512 b=_mm512_set1_ps(0.999f),c=_mm512_set1_ps(1e-4f);
for(long k=0;k<n;k++){for(int i=0;i<24;i++)a[i]=_mm512_fmadd_ps(a[i],b,c);} return _mm512_reduce_add_ps(a[0]);}
int main(){long n=100000000;for(int r=0;r<3;r++){double t=now();float x=f256(n);double t1=now()-t;t=now();float y=f512(n);double t2=now()-t;
printf("avx2 %.1f GFLOP/s  avx512 %.1f GFLOP/s (%g %g)\n",n*24*8*2/t1/1e9,n*24*16*2/t2/1e9,x,y);}}
